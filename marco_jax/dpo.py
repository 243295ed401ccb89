"""Direct preference optimisation from an SFT model (`train.init_from`).

    python -m marco_jax.dpo --config configs/dpo_demo.py --workdir runs/dpo [--config.key=value]

Pairs (`dpo.train_file`): `{"prompt", "chosen", "rejected"}` strings, or chosen/rejected message
lists. Losses sigmoid (+ conservative label smoothing), robust, hinge, IPO; reference log-probs
precomputed once and stored beside the data (default), a frozen reference model, or none.
Writes dpo_curves.png (reward accuracy and margins) beside loss_curve.png. Exit status as
`python -m marco_jax.train`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marco_jax.train.cli import run_cli
from marco_jax.train.posttrain import train_dpo


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, "python -m marco_jax.dpo", __doc__, train_dpo, "dpo")


if __name__ == "__main__":
    sys.exit(main())
