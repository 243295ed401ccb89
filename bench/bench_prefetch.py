"""Does input prefetch hide a slow tokenizer? The real training loop's step time with and
without `data.prefetch`, while the tokenizer is a sleeping stub (the real encode plus a sleep per
document), at stub delays below and above the step time.

    python bench/bench_prefetch.py [--steps 10] [--ratios 0.25,0.5,0.8,1.5,2.5]
    python bench/bench_prefetch.py --fake-step 0.2 [--steps 30]

Each run is `marco_jax.train.loop.train` (model preset "tiny", the real 151,936-token vocab,
demo mixture over the package's sample corpus, log_every=1 so every step is synchronised as a
logging step is) for `--steps` steps; the step time is the mean interval between step ends
over the second half of the run (after compile and after the prefetch queue's head start).
`--fake-step S` replaces the loop by a fixed-cost fake step (sleep S: the host is free while an
accelerator computes) around the same iterator and prefetcher: the same measurement without the
noise of a shared 2-core CPU, where the real CPU step competes with everything else.
The stub delays are chosen so that the stubbed pipeline alone takes `ratios` x the measured
step time per batch; "pipeline/batch" is that pipeline alone (no training), measured. Expected:
without prefetch, step ~= compute + pipeline; with prefetch, step ~= max(compute, pipeline).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from marco_jax.config import to_experiment  # noqa: E402
from marco_jax.data.pipeline import iterator_for_plan, resolve_plan  # noqa: E402
from marco_jax.data.tokenizer import get_tokenizer  # noqa: E402
from marco_jax.train import hooks as H  # noqa: E402
from marco_jax.train.loop import train  # noqa: E402


class StepClock(H.Hook):
    """Wall time at the end of every step (after the logging hook has synchronised)."""

    def __init__(self):
        self.ends: list[float] = []

    def after_step(self, run, sums) -> None:
        self.ends.append(time.perf_counter())


def slow_tokenizer(delay: float) -> None:
    tok = get_tokenizer()
    real = type(tok).encode

    def encode(text: str, allow_special: bool = False) -> list[int]:
        time.sleep(delay)
        return real(tok, text, allow_special)

    tok.encode = encode


def config(steps: int, prefetch: int):
    return to_experiment({
        "model": {"preset": "tiny"},
        "data": dict(mixture="demo", seq_len=64, global_batch_size=4, prefetch=prefetch),
        "train": dict(steps=steps, log_every=1, loss_chunk=32),
        "checkpoint": dict(every=0, keep=1, async_save=False),
    })


PLAN = resolve_plan(config(1, 0))  # built before the stub: only the iterator is slowed


def iterator(prefetch: int):
    return iterator_for_plan(PLAN, config(1, prefetch), 0, 1)


def late_mean(ends: list[float]) -> float:
    """Mean step time over the second half of the run (after compile and the queue's head
    start): the mean, as a slow pipeline shows in the average, not in every step."""
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return statistics.mean(gaps[len(gaps) // 2:])


def step_time(steps: int, prefetch: int) -> float:
    clock = StepClock()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        train(config(steps, prefetch), workdir, progress=False, devices=jax.devices()[:1],
              iterators=lambda c, p, n: (iterator(prefetch), None), extra_hooks=[clock])
    return late_mean(clock.ends)


def fake_step_time(steps: int, prefetch: int, step_s: float) -> float:
    it = iterator(prefetch)
    ends = []
    for _ in range(steps):
        next(it)
        time.sleep(step_s)  # the accelerator's step; the host thread is free meanwhile
        ends.append(time.perf_counter())
    return late_mean(ends)


def pipeline_time(batches: int) -> tuple[float, float]:
    """(seconds per batch, documents read per batch) of the pipeline alone, over the same
    window of batches as the step times (the second half)."""
    it = iterator(0)
    ends, docs = [time.perf_counter()], []
    for _ in range(batches):
        next(it)
        ends.append(time.perf_counter())
        docs.append(it.counters.examples)
    half = len(docs) // 2
    return late_mean(ends), (docs[-1] - docs[half - 1]) / (len(docs) - half)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ratios", default="0.25,0.5,0.8,1.5,2.5",
                    help="stubbed pipeline time per batch, as multiples of the step time")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--fake-step", type=float, default=0.0,
                    help="seconds of a fixed-cost fake step instead of the real loop")
    args = ap.parse_args()
    if args.fake_step:
        def measure(prefetch: int) -> float:
            return fake_step_time(args.steps, prefetch, args.fake_step)
        what = f"fake step (sleep {args.fake_step}s), the real iterator"
    else:
        def measure(prefetch: int) -> float:
            return step_time(args.steps, prefetch)
        what = "real loop (marco_jax.train.loop.train), preset tiny"
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    print(f"{what}, batch 4x64, {args.steps} steps, {os.cpu_count()} cores, "
          f"{jax.devices()[0].platform}")
    base = measure(0)
    real_pipe, docs = pipeline_time(args.steps)
    print(f"step without a stub: {base:.3f}s; real pipeline {real_pipe:.3f}s/batch, "
          f"{docs:.1f} documents/batch")
    print(f"{'stub s/doc':>10} {'pipeline/batch':>15} {'/ step':>7} {'step, no prefetch':>18} "
          f"{'step, prefetch=' + str(args.prefetch):>18}")
    for ratio in (float(x) for x in args.ratios.split(",")):
        delay = ratio * base / docs
        slow_tokenizer(delay)
        pipe, _ = pipeline_time(args.steps)
        plain, ahead = measure(0), measure(args.prefetch)
        print(f"{delay:>10.3f} {pipe:>14.3f}s {pipe / base:>7.2f} {plain:>17.3f}s "
              f"{ahead:>17.3f}s", flush=True)


if __name__ == "__main__":
    main()
