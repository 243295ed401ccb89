"""The embedded demo: a tiny Qwen2 (real 151,936-token vocabulary) continually pretrained on the
package's multilingual sample corpus with the stage-I mixture structure, in a few minutes on two
CPU cores.

    python -m marco_jax.train --config configs/demo.py --workdir /tmp/marco_demo

Writes checkpoints/, tensorboard/, metrics.jsonl and loss_curve.png under the workdir. The model
starts from random weights (there is no tiny pretrained Qwen2 to continue from); a real run sets
train.init_from to a converted checkpoint (see configs/cpt_*_stage1.py).
"""

from marco_jax.config import load_sibling


def get_config():
    c = load_sibling(__file__, "base").get_base_config()
    c.model.preset = "tiny"  # 2 layers, hidden 128, 151,936 vocab (the lm head dominates cost)
    c.model.dtype = "float32"  # fp32 is faster than bf16 on CPU
    c.mesh.ici.fsdp = -1

    c.data.mixture = "demo"  # stage-I group shares over the sample corpus
    c.data.sources_dir = ""  # the package's sample corpus
    c.data.seq_len = 128
    c.data.global_batch_size = 4
    c.data.eval_fraction = 0.1  # documents held out of training, per task, for the eval loss

    c.optim.peak_lr = 3e-3  # from scratch and tiny: far above the CPT rates (1e-5, 6e-6)
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.01

    c.train.steps = 120
    c.train.log_every = 10
    c.train.eval_every = 40
    c.train.loss_chunk = 32  # keeps a [4, 32, 151936] fp32 logits chunk (~78 MB) at a time
    c.eval.batches = 2

    c.checkpoint.every = 40
    c.checkpoint.keep = 2
    return c
