"""Input-pipeline throughput beside the demo trainer's, on this machine (prints figures).

    python bench/bench_input_pipeline.py [--config configs/demo.py] [--batches 200] [--steps 20]

Pipeline: tokens/s of `make_train_iterator` (read, render, tokenize, sample, pack) for one host,
counting every row position (padding included) and, separately, target tokens. Trainer: tokens/s
of the demo config's jitted train step (`marco_jax.train.step`) on CPU, on batches from the same
pipeline, after compilation. The pipeline must be >= 5x faster than the trainer consumes.

Without configs/demo.py the base config is used (mixture "demo"); when the package's sample
corpus is absent, a corpus is built from ../shared/data texts into a temp dir (see
tests/data_corpus.py) and the stage-I mixture is read from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]


def load_config(path: Path):
    """`get_config()` of a config file; the base config (mixture "demo") if there is none."""
    if not path.exists():
        path = ROOT / "configs" / "base.py"
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module.get_config() if hasattr(module, "get_config") else module.get_base_config()


def pipeline_rate(config, batches: int) -> tuple[float, float, object]:
    from marco_jax.data.pipeline import make_train_iterator

    it = make_train_iterator(config, 0, 1)
    for _ in range(3):
        next(it)
    start_targets = it.counters.target_tokens
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    positions = batches * int(config.data.global_batch_size) * int(config.data.seq_len)
    return positions / dt, (it.counters.target_tokens - start_targets) / dt, it


def trainer_rate(config, it, steps: int) -> float:
    import jax
    from flax import nnx

    from marco_jax.model.config import from_experiment
    from marco_jax.model.qwen2 import init_model
    from marco_jax.train.optimizer import make_optimizer
    from marco_jax.train.state import TrainState
    from marco_jax.train.step import make_train_step

    model = init_model(from_experiment(config.model), int(config.train.seed))
    graphdef, state = nnx.split(model)
    tx = make_optimizer(config.optim, int(config.train.steps))
    train_state = TrainState.create(nnx.to_pure_dict(state), tx)
    step = jax.jit(make_train_step(graphdef, tx, config, num_sources=len(it.source_names)),
                   donate_argnums=0)
    batches = [next(it) for _ in range(steps + 2)]
    for b in batches[:2]:  # compile + one warm step
        train_state, metrics = step(train_state, b)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for b in batches[2:]:
        train_state, metrics = step(train_state, b)
    jax.block_until_ready(metrics)
    dt = time.perf_counter() - t
    return steps * int(config.data.global_batch_size) * int(config.data.seq_len) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.py"))
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    path = Path(args.config)
    config = load_config(path)
    note = ""
    from marco_jax.data.tasks import SAMPLE_DATA_DIR

    if not config.data.sources_dir and not Path(SAMPLE_DATA_DIR, "web").is_dir():
        sys.path.insert(0, str(ROOT / "tests"))
        from data_corpus import build_corpus

        shared = Path(os.environ.get("MARCO_SHARED_DATA", ROOT.parent / "shared" / "data"))
        tmp = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
        config.data.sources_dir = str(build_corpus(tmp, shared))
        config.data.mixture = "marco_stage1"
        note = f" (sample corpus absent: built from {shared}, mixture marco_stage1)"
    d = config.data
    print(f"config {path if path.exists() else 'configs/base.py'}{note}")
    print(f"mixture {d.mixture}, seq_len {d.seq_len}, global batch {d.global_batch_size}, "
          f"model preset {config.model.preset}, cores {os.cpu_count()}")
    positions, targets, it = pipeline_rate(config, args.batches)
    print(f"input pipeline : {positions:12,.0f} tokens/s (row positions)  "
          f"{targets:12,.0f} target tokens/s  [{args.batches} batches, 1 host, 1 thread]")
    train = trainer_rate(config, it, args.steps)
    print(f"demo trainer   : {train:12,.0f} tokens/s  [{args.steps} steps after compile, CPU]")
    print(f"ratio          : {positions / train:12.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
