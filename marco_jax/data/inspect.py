"""Prints what a config's input pipeline feeds the model.

    python -m marco_jax.data.inspect --config configs/demo.py [--examples 20000]
        [--config.data.mixture=marco_stage2 --config.data.sources_dir=gs://bucket/shards]

Mixture table (target vs realised token share per group and per task), tasks left out (no
source, zero records), tokenizer fertility per language, and a sample document per task. Logic:
`marco_jax.data.report`. Bad input (config, mixture, sources) exits 2 with one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marco_jax.config.cli import experiment_parser, fail, parse
from marco_jax.data.report import mixture_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = experiment_parser("python -m marco_jax.data.inspect", __doc__)
    parser.add_argument("--examples", type=int, default=20_000,
                        help="examples to draw for the realised shares")
    config, args = parse(argv, parser)
    if args.examples < 1:
        fail(f"--examples={args.examples}: expected >= 1")
    try:
        print(mixture_report(config, args.examples))
    except (ValueError, FileNotFoundError) as e:  # mixture, sources or records
        fail(str(e).splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
