"""Continual pretraining (the main job).

    python -m marco_jax.train --config configs/demo.py --workdir /tmp/demo [--config.key=value ...]

Restarting the same command resumes from the workdir's latest checkpoint. Exit status 0 when the
run finishes or is preempted (SIGTERM: it saves first), 1 when it stops on non-finite steps.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and TensorBoard logs "
                               "go (local or gs://); default: config.train.workdir")


def main(argv: list[str]) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save step at INFO
        logging.set_verbosity(logging.WARNING)
    from marco_jax.parallel import initialize_distributed
    from marco_jax.train.trainer import TooManyBadSteps, train

    config = _CONFIG.value
    if config is None:
        print("error: --config is required", file=sys.stderr)
        return 2
    workdir = _WORKDIR.value or config.train.get("workdir", "")
    if not workdir:
        print("error: --workdir is required (or set config.train.workdir)", file=sys.stderr)
        return 2
    initialize_distributed()
    try:
        summary = train(config, workdir)
    except TooManyBadSteps as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:  # bad config, paths or checkpoint layout
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{summary['status']}: step {summary['step']}, loss {summary['first_loss']} -> "
          f"{summary['last_loss']}; workdir {summary['workdir']}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
