"""Tiny multilingual DPO on the package's own preference pairs, from the SFT demo's weights;
reference log-probs precomputed once (written to the workdir: the pairs ship inside the package).

    python -m marco_jax.dpo --config configs/dpo_demo.py --workdir runs/dpo_demo \
        [--config.train.init_from=runs/sft_demo]
"""

from pathlib import Path

from marco_jax.config import load_sibling

PAIRS = Path(__file__).resolve().parents[1] / "marco_jax" / "sample_data" / "dpo" / "pairs.jsonl"


def get_config():
    c = load_sibling(__file__, "base").get_base_config()
    c.train.objective = "dpo"
    c.model.preset = "tiny"
    c.dpo.train_file = str(PAIRS)
    c.dpo.beta = 0.1
    c.dpo.loss = "sigmoid"
    c.dpo.reference = "precomputed"
    c.dpo.pairs_per_row = 2
    c.data.seq_len = 256
    c.data.global_batch_size = 4
    c.optim.peak_lr = 5e-4  # tiny model; the 7B/72B recipe uses 5e-7
    c.optim.warmup_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.train.epochs = 6
    c.train.init_from = "runs/sft_demo"
    c.train.log_every = 2
    c.train.loss_chunk = 64
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    return c
