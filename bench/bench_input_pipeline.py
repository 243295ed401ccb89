"""Input-pipeline throughput beside the demo trainer's, on this machine (prints figures).

    python bench/bench_input_pipeline.py [--config configs/demo.py] [--batches 200] [--steps 20]

Pipeline: tokens/s of `make_train_iterator` (read, render, tokenize, sample, pack) for one host,
one thread (no prefetch), counting every row position (padding included) and, separately, target
tokens. Trainer: tokens/s of the real loop (`marco_jax.train.loop.train`) with the demo config on
CPU, fed batches made beforehand by the same pipeline (so only the trainer is timed), median step
after compilation. The pipeline must be >= 5x faster than the trainer consumes.

When the package's sample corpus is absent, a corpus is built from ../shared/data texts into a
temp dir (see tests/data_corpus.py) and the stage-I mixture is read from it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]

import jax  # noqa: E402

from marco_jax.config import load_config_file  # noqa: E402
from marco_jax.data.pipeline import make_train_iterator  # noqa: E402
from marco_jax.data.tasks import SAMPLE_DATA_DIR  # noqa: E402
from marco_jax.train import hooks as H  # noqa: E402
from marco_jax.train.loop import train  # noqa: E402


def pipeline_rate(config, batches: int) -> tuple[float, float, object]:
    it = make_train_iterator(config, 0, 1, prefetch=0)
    for _ in range(3):
        next(it)
    start_targets = it.counters.target_tokens
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    positions = batches * config.data.global_batch_size * config.data.seq_len
    return positions / dt, (it.counters.target_tokens - start_targets) / dt, it


class _Fixed:
    """Batches made beforehand, cycled (the iterator contract, state = position)."""

    def __init__(self, batches: list, source_names: list[str]):
        self.batches, self.source_names, self.k = batches, source_names, 0

    def __next__(self):
        self.k += 1
        return self.batches[(self.k - 1) % len(self.batches)]

    def get_state(self) -> dict:
        return {"k": self.k}

    def set_state(self, state: dict) -> None:
        self.k = state["k"]


class _StepClock(H.Hook):
    def __init__(self):
        self.ends: list[float] = []

    def after_step(self, run, sums) -> None:
        self.ends.append(time.perf_counter())


def trainer_rate(config, it, steps: int) -> float:
    batches = [next(it) for _ in range(4)]
    config = config.replace(
        # random init: only the step's speed matters here, not where the weights come from
        train=dataclasses.replace(config.train, steps=steps + 2, log_every=1, eval_every=0,
                                  init_from=""),
        checkpoint=dataclasses.replace(config.checkpoint, every=0))
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        train(config, workdir, progress=False, devices=jax.devices()[:1],
              iterators=lambda c, p, n: (_Fixed(batches, it.source_names), None),
              extra_hooks=[clock])
    step = statistics.median(b - a for a, b in zip(clock.ends[1:], clock.ends[2:], strict=False))
    return config.data.global_batch_size * config.data.seq_len / step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.py"))
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    config = load_config_file(args.config)
    note = ""
    if not config.data.sources_dir and not Path(SAMPLE_DATA_DIR, "web").is_dir():
        sys.path.insert(0, str(ROOT / "tests"))
        from data_corpus import build_corpus

        shared = Path(os.environ.get("MARCO_SHARED_DATA", ROOT.parent / "shared" / "data"))
        tmp = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
        config = config.replace(data=dataclasses.replace(
            config.data, sources_dir=str(build_corpus(tmp, shared)), mixture="marco_stage1"))
        note = f" (sample corpus absent: built from {shared}, mixture marco_stage1)"
    d = config.data
    print(f"config {args.config}{note}")
    print(f"mixture {d.mixture}, seq_len {d.seq_len}, global batch {d.global_batch_size}, "
          f"model preset {config.model.preset}, cores {os.cpu_count()}")
    positions, targets, it = pipeline_rate(config, args.batches)
    print(f"input pipeline : {positions:12,.0f} tokens/s (row positions)  "
          f"{targets:12,.0f} target tokens/s  [{args.batches} batches, 1 host, 1 thread]")
    rate = trainer_rate(config, it, args.steps)
    print(f"demo trainer   : {rate:12,.0f} tokens/s  [{args.steps} steps after compile, CPU]")
    print(f"ratio          : {positions / rate:12.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
