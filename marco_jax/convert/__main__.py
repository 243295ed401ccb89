"""CLI: convert between Hugging Face Qwen2 checkpoints, ours, and training runs.

  python -m marco_jax.convert hf-to-orbax --hf HF_DIR --out OUT_DIR [--dtype bfloat16]
  python -m marco_jax.convert orbax-to-hf --checkpoint OUT_DIR --out HF_DIR [--max-shard-size 5GB]
  python -m marco_jax.convert run-to-hf --workdir RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16]
  python -m marco_jax.convert run-to-orbax --workdir RUN_DIR [--step N] --out OUT_DIR

Our checkpoints (OUT_DIR) and training workdirs (RUN_DIR) may be local or gs://; HF directories
are local (download / upload them with `gcloud storage rsync -r`). run-to-* read only the params
of the run's step (default: the latest), never its optimizer state.

hf-to-orbax refuses a non-empty OUT_DIR (--overwrite replaces the checkpoint in it) and NaN/Inf
weights, naming the tensor (--allow-nonfinite converts them as they are). Bad input of any kind:
one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from etils import epath

from marco_jax.checkpoint import is_run_workdir
from marco_jax.convert.from_run import export_run_to_hf, export_run_to_orbax
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.convert.ours_to_hf import export_orbax_to_hf
from marco_jax.paths import is_remote

DTYPES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
    # Paths stay strings: pathlib would turn gs://b/x into gs:/b/x.
    p = argparse.ArgumentParser(prog="python -m marco_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("hf-to-orbax", help="HF safetensors (or .bin) dir -> our checkpoint")
    imp.add_argument("--hf", required=True, help="local HF model dir with config.json")
    imp.add_argument("--out", required=True, help="output checkpoint dir (local or gs://)")
    imp.add_argument("--dtype", choices=DTYPES,
                     help="store params in this dtype (default: keep the checkpoint's)")
    vocab = imp.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, help="pad (zeros) or trim vocab rows to this")
    vocab.add_argument("--vocab-multiple", type=int, help="pad vocab rows up to a multiple")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace the checkpoint in a non-empty --out (refused otherwise)")
    imp.add_argument("--allow-nonfinite", action="store_true",
                     help="convert NaN/Inf weights as they are (refused otherwise)")
    exp = sub.add_parser("orbax-to-hf", help="our checkpoint -> HF safetensors dir")
    exp.add_argument("--checkpoint", required=True, help="our checkpoint dir (local or gs://)")
    _hf_out_args(exp)
    for name, what in (("run-to-hf", "HF safetensors dir"), ("run-to-orbax", "our checkpoint")):
        run = sub.add_parser(name, help=f"a training run's checkpoint (params only) -> {what}")
        run.add_argument("--workdir", required=True,
                         help="the run's --workdir (holds checkpoints/; local or gs://)")
        run.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
        if name == "run-to-hf":
            _hf_out_args(run)
        else:
            run.add_argument("--out", required=True, help="output checkpoint dir (local or gs://)")
            run.add_argument("--dtype", choices=DTYPES,
                             help="store params in this dtype (default: the run's param dtype)")
            run.add_argument("--overwrite", action="store_true")
    return p


def _hf_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output HF model dir (local)")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--dtype", choices=DTYPES,
                   help="write tensors in this dtype (default: keep the stored one)")
    p.add_argument("--overwrite", action="store_true")


def _run(args: argparse.Namespace) -> str:
    if args.command == "hf-to-orbax":
        if not is_remote(args.hf) and not (Path(args.hf) / "config.json").is_file():
            raise FileNotFoundError(f"--hf {args.hf}: no config.json (expected a HF model dir)")
        config = convert_hf_to_orbax(args.hf, args.out, dtype=args.dtype,
                                     vocab_size=args.vocab_size,
                                     vocab_multiple=args.vocab_multiple, overwrite=args.overwrite,
                                     allow_nonfinite=args.allow_nonfinite)
        return f"converted {args.hf} -> {args.out} ({config.num_params():,} params, " \
               f"{config.param_dtype})"
    if args.command == "orbax-to-hf":
        if not epath.Path(args.checkpoint).is_dir():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such directory")
        if is_run_workdir(args.checkpoint):
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: a training workdir, not a "
                                    "converted checkpoint; export it with run-to-hf --workdir")
        files = export_orbax_to_hf(args.checkpoint, args.out, max_shard_size=args.max_shard_size,
                                   dtype=args.dtype, overwrite=args.overwrite)
        return f"exported {args.checkpoint} -> {args.out} ({len(files) - 1} safetensors files)"
    if args.command == "run-to-hf":
        run, files = export_run_to_hf(args.workdir, args.out, step=args.step,
                                      max_shard_size=args.max_shard_size, dtype=args.dtype,
                                      overwrite=args.overwrite)
        return f"exported {args.workdir} step {run.step} -> {args.out} " \
               f"({len(files) - 1} safetensors files)"
    run, config = export_run_to_orbax(args.workdir, args.out, step=args.step, dtype=args.dtype,
                                      overwrite=args.overwrite)
    return f"exported {args.workdir} step {run.step} -> {args.out} " \
           f"({config.num_params():,} params, {config.param_dtype})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        print(_run(args))
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)  # ImportError: torch missing for a .bin checkpoint
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
