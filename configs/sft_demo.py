"""Tiny multilingual SFT on the package's own chat data (20 languages, three record layouts),
continuing the CPT demo's final weights. A minute or two on 2 CPU cores.

    python -m marco_jax.sft --config configs/sft_demo.py --workdir runs/sft_demo \
        [--config.train.init_from=runs/demo]   # "" trains from random weights
"""

from marco_jax.config import load_sibling


def get_config():
    c = load_sibling(__file__, "base").get_base_config()
    c.train.objective = "sft"
    c.model.preset = "tiny"
    c.data.sft_files = ()  # the shipped marco_jax/sample_data/sft/*.jsonl
    c.data.seq_len = 256
    c.data.global_batch_size = 8
    c.data.on_bad_record = "error"
    c.optim.peak_lr = 3e-3  # tiny model: far above the 7B/72B recipe's 2e-5 / 1e-5
    c.optim.warmup_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"
    c.train.epochs = 20
    c.train.init_from = "runs/demo"
    c.train.log_every = 5
    c.train.loss_chunk = 64
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    return c
