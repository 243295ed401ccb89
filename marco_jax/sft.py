"""Multilingual supervised fine-tuning: ChatML, loss on assistant tokens only, per-language loss.

    python -m marco_jax.sft --config configs/sft_demo.py --workdir runs/sft [--config.key=value]

Data (`data.sft_files`): JSONL(.gz) of `{"messages": [...]}`, ShareGPT `{"conversations": [...]}`
or `{"prompt", "response"}` records, optional `language`; bad records are an error naming file
and line, or counted by reason in report.json with `--config.data.on_bad_record=skip`. Exit
status as `python -m marco_jax.train`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marco_jax.train.cli import run_cli
from marco_jax.train.posttrain import train_sft


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, "python -m marco_jax.sft", __doc__, train_sft, "sft")


if __name__ == "__main__":
    sys.exit(main())
