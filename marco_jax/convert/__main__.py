"""CLI: convert between Hugging Face Qwen2 checkpoints and ours.

  python -m marco_jax.convert hf-to-orbax --hf HF_DIR --out OUT_DIR [--dtype bfloat16]
  python -m marco_jax.convert orbax-to-hf --checkpoint OUT_DIR --out HF_DIR [--max-shard-size 5GB]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.convert.ours_to_hf import export_orbax_to_hf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m marco_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("hf-to-orbax", help="HF safetensors (or .bin) dir -> our checkpoint")
    imp.add_argument("--hf", required=True, type=Path, help="HF model dir with config.json")
    imp.add_argument("--out", required=True, type=Path, help="output checkpoint dir")
    imp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="store params in this dtype (default: keep the checkpoint's)")
    vocab = imp.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, help="pad (zeros) or trim vocab rows to this")
    vocab.add_argument("--vocab-multiple", type=int, help="pad vocab rows up to a multiple")
    imp.add_argument("--overwrite", action="store_true")
    exp = sub.add_parser("orbax-to-hf", help="our checkpoint -> HF safetensors dir")
    exp.add_argument("--checkpoint", required=True, type=Path, help="our checkpoint dir")
    exp.add_argument("--out", required=True, type=Path, help="output HF model dir")
    exp.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB (default 5GB)")
    exp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="write tensors in this dtype (default: keep the stored one)")
    exp.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "hf-to-orbax":
            if not (args.hf / "config.json").is_file():
                raise FileNotFoundError(f"--hf {args.hf}: no config.json (expected a HF model dir)")
            config = convert_hf_to_orbax(args.hf, args.out, dtype=args.dtype,
                                         vocab_size=args.vocab_size,
                                         vocab_multiple=args.vocab_multiple,
                                         overwrite=args.overwrite)
            print(f"converted {args.hf} -> {args.out} ({config.num_params():,} params, "
                  f"{config.param_dtype})")
        else:
            if not args.checkpoint.is_dir():
                raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such directory")
            files = export_orbax_to_hf(args.checkpoint, args.out,
                                       max_shard_size=args.max_shard_size, dtype=args.dtype,
                                       overwrite=args.overwrite)
            print(f"exported {args.checkpoint} -> {args.out} ({len(files) - 1} safetensors files)")
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
