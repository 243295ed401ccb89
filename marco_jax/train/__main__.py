"""Continual pretraining (the main job).

    python -m marco_jax.train --config configs/demo.py --workdir /tmp/demo [--config.key=value ...]

Restarting the same command resumes from the workdir's newest readable checkpoint. Exit status:
0 when the run finishes or is preempted (SIGTERM: it saves first), 1 when it stops on non-finite
steps, 2 on bad input (config, paths, checkpoint layout), 3 when a checkpoint cannot be written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from marco_jax.config.cli import experiment_parser, fail, parse
from marco_jax.parallel import initialize_distributed
from marco_jax.train.hooks import (
    EXIT_CHECKPOINT_FAILED,
    EXIT_RUN_FAILED,
    CheckpointSaveFailed,
    TooManyBadSteps,
)
from marco_jax.train.loop import train


def run_cli(argv: Sequence[str] | None, prog: str, doc: str | None, objective_factory=None) -> int:
    """Shared by the train / sft / dpo CLIs: parse, train with `objective_factory(experiment,
    train_iterator)` (None: CPT), map failures to exit codes."""
    parser = experiment_parser(prog, doc)
    parser.add_argument("--workdir", default=None, help="where checkpoints, metrics and "
                        "TensorBoard logs go (local or gs://); default: config.train.workdir")
    config, args = parse(argv, parser)
    workdir = args.workdir or config.train.workdir
    if not workdir:
        fail("--workdir is required (or set config.train.workdir)")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO
    initialize_distributed()
    try:
        summary = train(config, workdir) if objective_factory is None else \
            objective_factory(config, workdir)
    except TooManyBadSteps as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except CheckpointSaveFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT_FAILED
    except (ValueError, FileNotFoundError) as e:  # bad config, paths or checkpoint layout
        fail(str(e))
    loss = summary.get("last_loss")
    print(f"{summary['status']}: step {summary['step']}"
          + (f", loss {summary.get('first_loss'):.4f} -> {loss:.4f}" if loss is not None
             and summary.get("first_loss") is not None else "")
          + f"; workdir {summary['workdir']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, "python -m marco_jax.train", __doc__)


if __name__ == "__main__":
    sys.exit(main())
