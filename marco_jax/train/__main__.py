"""Continual pretraining (the main job).

    python -m marco_jax.train --config configs/demo.py --workdir /tmp/demo [--config.key=value ...]

Restarting the same command resumes from the workdir's newest readable checkpoint. Exit status:
0 when the run finishes or is preempted (SIGTERM: it saves first), 1 when it stops on non-finite
steps, 2 on bad input (config, paths, checkpoint layout), 3 when a checkpoint cannot be written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marco_jax.train.cli import run_cli
from marco_jax.train.loop import train


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, "python -m marco_jax.train", __doc__, train, "lm")


if __name__ == "__main__":
    sys.exit(main())
