"""What the train / sft / dpo CLIs share: flags, the run, and one exit-code convention
(0 done or preempted, 1 the run stopped on non-finite steps, 2 bad input, 3 a checkpoint could
not be written)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from marco_jax.compile_cache import enable_compilation_cache
from marco_jax.config import Experiment
from marco_jax.config.cli import experiment_parser, fail, parse
from marco_jax.parallel import initialize_distributed
from marco_jax.platform import cpu_has_amx
from marco_jax.train.hooks import (
    EXIT_CHECKPOINT_FAILED,
    EXIT_RUN_FAILED,
    CheckpointSaveFailed,
    TooManyBadSteps,
)

Runner = Callable[[Experiment, str], dict[str, Any]]


def warn_slow_matmul_dtype(matmul_dtype: str) -> None:
    """bf16 matmul operands pay on CPUs with AMX tiles (marco_jax/model/matmul.py); elsewhere
    XLA:CPU may run them slower than float32. One stderr line, the run goes on."""
    import jax

    if matmul_dtype in ("bfloat16", "float16") and jax.default_backend() == "cpu" and (
            cpu_has_amx() is False):
        print(f"warning: model.matmul_dtype={matmul_dtype} on a CPU without AMX (no amx_bf16 "
              "in /proc/cpuinfo): XLA:CPU may run these matmuls slower than float32",
              file=sys.stderr)


def closing_losses(summary: dict[str, Any]) -> str:
    """", train loss A -> B, held-out loss C -> D" from what this process ran (first and last
    logged train loss; first and last held-out eval), each part only where both ends exist. The
    held-out pair is the comparable one when the train mixture changes (a later stage)."""
    parts = []
    for label, first_key, last_key in (("train loss", "first_loss", "last_loss"),
                                       ("held-out loss", "first_eval_loss", "last_eval_loss")):
        first, last = summary.get(first_key), summary.get(last_key)
        if first is not None and last is not None:
            parts.append(f", {label} {first:.4f} -> {last:.4f}")
    return "".join(parts)


def run_cli(argv: Sequence[str] | None, prog: str, doc: str | None, runner: Runner,
            objective: str) -> int:
    parser = experiment_parser(prog, doc)
    parser.add_argument("--workdir", default=None, help="where checkpoints, metrics and "
                        "TensorBoard logs go (local or gs://); default: config.train.workdir")
    config, args = parse(argv, parser)
    if config.train.objective != objective:
        fail(f"{args.config}: train.objective={config.train.objective!r}, but {prog} trains "
             f"{objective!r} (use the matching CLI, or set --config.train.objective)")
    workdir = args.workdir or config.train.workdir
    if not workdir:
        fail("--workdir is required (or set config.train.workdir)")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO
    enable_compilation_cache(config.train.compilation_cache_dir)
    initialize_distributed()  # before anything starts a JAX backend
    warn_slow_matmul_dtype(config.model.matmul_dtype)
    try:
        summary = runner(config, workdir)
    except TooManyBadSteps as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except CheckpointSaveFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT_FAILED
    except (ValueError, FileNotFoundError) as e:  # bad config, paths, data or checkpoint layout
        fail(str(e))
    print(f"{summary['status']}: step {summary['step']}{closing_losses(summary)}; "
          f"workdir {summary['workdir']}")
    return 0
