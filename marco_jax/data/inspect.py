"""Prints what a config's input pipeline feeds the model.

    python -m marco_jax.data.inspect --config configs/demo.py [--examples 20000]
        [--config.data.mixture=marco_stage2 --config.data.sources_dir=gs://bucket/shards]

Mixture table (target vs realised token share per group and per task), tokenizer fertility per
language, and a sample document per task. Logic: `marco_jax.data.report`.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file")
_EXAMPLES = flags.DEFINE_integer("examples", 20_000, "examples to draw for the realised shares")


def main(argv: list[str]) -> None:
    del argv
    from marco_jax.data.report import mixture_report

    print(mixture_report(_CONFIG.value, _EXAMPLES.value))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
