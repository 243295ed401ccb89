"""Stage 0 of the embedded demo: pretrain a tiny Qwen2 (real 151,936-token vocabulary) from
random weights on the English and Chinese part of the package's sample corpus, so that
`configs/demo.py` has a small model that already knows some languages to continue from.

    python -m marco_jax.train --config configs/demo_base.py --workdir runs/demo_base

English and Chinese stand for what a Qwen2 base knows best; the demo's stage I then adds the
other 27 languages (configs/demo.py) and watches English/Chinese for forgetting.
"""

from marco_jax.config import load_sibling


def get_config():
    c = load_sibling(__file__, "base").get_base_config()
    c.model.preset = "tiny"  # 2 layers, hidden 128, 151,936 vocab (the lm head dominates cost)
    c.model.dtype = "float32"  # fp32 is faster than bf16 on CPU
    # On a CPU with AMX (Sapphire Rapids+), --config.model.matmul_dtype=bfloat16 runs the matmuls
    # in bf16 with fp32 accumulation (README: "bf16 matmuls on CPU"); left off for reproducibility.
    c.mesh.ici.fsdp = -1  # all devices of the machine

    c.data.mixture = "demo"
    c.data.shares = {"english": 0.65, "chinese": 0.35}  # stage I's 0.32 : 0.17, nothing else
    c.data.sources_dir = ""  # the package's sample corpus
    c.data.seq_len = 128
    c.data.global_batch_size = 4
    c.data.eval_fraction = 0.15  # the same held-out documents as stage 1 (same fraction)

    c.optim.peak_lr = 3e-3  # from scratch and tiny: far above the CPT rates (1e-5, 6e-6)
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.01

    c.train.steps = 100
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.loss_chunk = 32  # keeps a [4, 32, 151936] fp32 logits chunk (~78 MB) at a time
    c.eval.batches = 2

    c.checkpoint.every = 100
    c.checkpoint.keep = 1
    return c
