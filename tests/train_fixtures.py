"""A tiny deterministic batch iterator honouring the data contract (tests only): batch k is a pure
function of (seed, k), so its state is just the next k."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if hasattr(mod, "get_config") else mod.get_base_config()


class SyntheticIterator:
    """Rows of two packed 'documents' from a skewed token distribution (so loss can fall)."""

    source_names = ["web.en", "web.kk"]

    def __init__(self, batch: int, seq_len: int, vocab: int, seed: int = 0):
        self.batch, self.seq_len, self.vocab, self.seed = batch, seq_len, vocab, seed
        self.k = 0
        self.delay = 0.0  # seconds per batch, so a test can interrupt a run mid-way
        self.on_batch = None  # optional callback(k) (e.g. to send a signal at batch k)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.delay:
            import time

            time.sleep(self.delay)
        if self.on_batch is not None:
            self.on_batch(self.k)
        rng = np.random.default_rng((self.seed, self.k))
        self.k += 1
        b, t = self.batch, self.seq_len
        # a repeating pattern per row plus noise: learnable
        base = rng.integers(0, self.vocab // 4, (b, 1)) + np.arange(t + 1)[None] % 7
        noise = rng.integers(0, self.vocab, (b, t + 1))
        toks = np.where(rng.random((b, t + 1)) < 0.8, base, noise).astype(np.int32)
        half = t // 2
        seg = np.concatenate([np.ones((b, half)), 2 * np.ones((b, t - half))], 1).astype(np.int32)
        seg[:, -2:] = 0
        pos = np.concatenate([np.arange(half), np.arange(t - half)])[None].repeat(b, 0)
        src = np.where(seg == 1, 0, 1).astype(np.int32)
        src[seg == 0] = -1
        return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "positions": pos.astype(np.int32),
                "segment_ids": seg, "loss_mask": (seg > 0).astype(np.int32), "source_ids": src}

    def get_state(self) -> dict:
        return {"k": self.k, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"iterator state has seed {state.get('seed')}, not {self.seed}")
        self.k = int(state["k"])


def synthetic_iterators(config, process_index: int, process_count: int):
    from marco_jax.config import to_experiment
    from marco_jax.model.config import from_experiment

    config = to_experiment(config)
    vocab = from_experiment(config.model).vocab_size
    b = config.data.global_batch_size // process_count
    train = SyntheticIterator(b, config.data.seq_len, vocab, config.data.seed)
    held = SyntheticIterator(b, config.data.seq_len, vocab, config.data.seed + 1000)
    return train, held if config.train.eval_every > 0 else None


def tiny_config(steps: int = 8):
    c = load_config("base")
    c.model.preset = "tiny"
    c.model.overrides.vocab_size = 512
    c.data.seq_len, c.data.global_batch_size = 32, 8
    c.train.steps, c.train.log_every, c.train.loss_chunk = steps, 1, 16
    c.checkpoint.every, c.checkpoint.keep = 3, 2
    c.optim.peak_lr, c.optim.warmup_steps = 3e-3, 2
    return c


if __name__ == "__main__":
    # Subprocess runner for the resume tests: python tests/train_fixtures.py WORKDIR STEPS DELAY
    import sys

    from marco_jax.train.loop import train

    workdir, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    def slow_iterators(config, process_index, process_count):
        train_it, _ = synthetic_iterators(config, process_index, process_count)
        train_it.delay = delay
        return train_it, None

    import jax

    summary = train(tiny_config(steps), workdir, iterators=slow_iterators, progress=False,
                    devices=jax.devices()[:1])
    print("SUMMARY", summary["status"], summary["step"], flush=True)
