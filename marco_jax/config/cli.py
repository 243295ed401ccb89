"""Command-line handling shared by the experiment CLIs (train, sft, dpo, aot, data.inspect):

    python -m marco_jax.<verb> --config configs/x.py [--config.optim.peak_lr=3e-5 ...] [flags]

argparse for the CLI's own flags; every `--config.<key>=<value>` (or `--config.<key> <value>`)
is an override validated against the schema. Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from marco_jax.config.load import ConfigError, load_config_file
from marco_jax.config.schema import Experiment

EXIT_BAD_INPUT = 2


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(other arguments, [(dotted key, value)]) from argv."""
    rest, overrides, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.") and len(arg) > len("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg}: no value given (use --config.{key}=VALUE)")
                value = argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse(argv: Sequence[str] | None, parser: argparse.ArgumentParser
          ) -> tuple[Experiment, argparse.Namespace]:
    """Parse `argv` (default sys.argv[1:]) with `parser` (which must define --config); exits 2
    with one line on any bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rest, overrides = split_overrides(argv)
    except ConfigError as e:
        fail(str(e))
    args = parser.parse_args(rest)
    try:
        exp = load_config_file(args.config, overrides)
    except ConfigError as e:
        fail(str(e))
    return exp, args


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def experiment_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any config key can be set with --config.<key>=<value>; "
                                "maps as k=v,k=v.")
    p.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
    return p

