"""CLI: run an evaluation suite on a checkpoint and write its report; compare result directories.

  python -m marco_jax.evaluate --config configs/eval_demo.py --checkpoint DIR [--step N]
      [--out DIR] [--limit N] [--tasks xcopa,belebele] [--data-root DIR] [--name NAME]
  python -m marco_jax.evaluate compare RESULT_DIR_A RESULT_DIR_B [...] --out DIR

--checkpoint takes a converted checkpoint (model_config.json + params/), a training run's workdir
(checkpoints/; the latest step, or --step N) or a Hugging Face Qwen2 directory (config.json +
safetensors, converted on the fly into a temporary directory). Results are written per task as
each finishes: re-running with the same --out skips the tasks already written. Bad input exits 2
with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax

from marco_jax.compile_cache import enable_compilation_cache
from marco_jax.evals.engine import Engine
from marco_jax.evals.report import ResultsError, compare, write_report
from marco_jax.evals.suite import (
    EvalConfigError,
    SuiteConfig,
    checkpoint_kind,
    load_eval_model,
    load_suite_config,
    run_suite,
    suite_mesh,
)
from marco_jax.evals.tasks import EvalDataError
from marco_jax.infer.generate import upcast_weights_warning
from marco_jax.parallel import initialize_distributed

EXIT_BAD_INPUT = 2


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m marco_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="eval suite config (configs/eval_*.py)")
    p.add_argument("--checkpoint", required=True,
                   help="converted checkpoint, training workdir, or HF Qwen2 directory")
    p.add_argument("--step", type=int, default=None, help="training step (workdir only)")
    p.add_argument("--out", default=None,
                   help="output directory (default: eval_results/<config>-<checkpoint>)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N items of every subset (overrides config)")
    p.add_argument("--tasks", default=None, help="comma-separated task labels to run")
    p.add_argument("--data-root", default=None, help="overrides the config's data_root")
    p.add_argument("--batch-size", type=int, default=None, help="overrides the config's")
    p.add_argument("--name", default=None, help="name of this run in reports and comparisons")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m marco_jax.evaluate compare",
                                description="Side-by-side report of two or more result "
                                "directories, with per-language deltas against the first.")
    p.add_argument("results", nargs="+", help="result directories (the first is the baseline)")
    p.add_argument("--out", required=True, help="where comparison.md/.json and plots go")
    return p


def _select(config: SuiteConfig, labels: str | None) -> SuiteConfig:
    if not labels:
        return config
    wanted = [x.strip() for x in labels.split(",") if x.strip()]
    known = [t.label for t in config.tasks]
    unknown = [x for x in wanted if x not in known]
    if unknown:
        raise EvalConfigError(f"--tasks: unknown task {unknown[0]!r}; the config has "
                              f"{', '.join(known)}")
    return dataclasses.replace(config, tasks=tuple(t for t in config.tasks if t.label in wanted))


def _run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    config = load_suite_config(args.config)
    config = _select(config, args.tasks)
    if args.data_root:
        config = dataclasses.replace(config, data_root=Path(args.data_root).resolve())
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise EvalConfigError(f"--batch-size {args.batch_size}: expected >= 1")
        config = dataclasses.replace(config, batch_size=args.batch_size)
    if args.limit is not None and args.limit < 0:
        raise EvalConfigError(f"--limit {args.limit}: expected >= 0")
    kind = checkpoint_kind(args.checkpoint, args.step)
    enable_compilation_cache()  # the next checkpoint's suite loads the compiled programs
    initialize_distributed()
    checkpoint_name = Path(args.checkpoint.rstrip("/")).name
    out = Path(args.out or f"eval_results/{Path(args.config).stem}-{checkpoint_name}")

    def make_engine() -> Engine:
        mesh = suite_mesh(config)
        model = load_eval_model(args.checkpoint, step=args.step, dtype=config.dtype, mesh=mesh,
                                matmul_dtype=config.matmul_dtype)
        warning = upcast_weights_warning(model, "the suite config's matmul_dtype")
        if warning and writer:
            print(warning, file=sys.stderr)
        return Engine(model, batch_size=config.batch_size, max_len=config.max_len,
                      length_buckets=config.length_buckets, mesh=mesh)

    meta = {"checkpoint": str(args.checkpoint), "checkpoint_kind": kind, "step": args.step,
            "name": args.name or checkpoint_name + (f"@{args.step}" if args.step else "")}
    writer = jax.process_index() == 0
    run_suite(config, out, make_engine, meta=meta, limit=args.limit,
              progress=not args.no_progress and writer, write=writer,
              log=print if writer else (lambda _: None))
    if writer:
        write_report(out)
        print(f"report: {out / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["compare"]:
            args = _compare_parser().parse_args(argv[1:])
            compare(args.results, args.out)
            print(f"comparison: {Path(args.out) / 'comparison.md'}")
            return 0
        return _run(argv)
    except (EvalConfigError, EvalDataError, ResultsError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
