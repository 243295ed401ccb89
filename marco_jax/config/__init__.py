"""The experiment config: one typed schema (`schema.py`), validated once at load (`load.py`)."""

from marco_jax.config.load import (
    ConfigError,
    apply_overrides,
    load_config_file,
    load_sibling,
    to_experiment,
)
from marco_jax.config.schema import Experiment

__all__ = ["ConfigError", "Experiment", "apply_overrides", "load_config_file", "load_sibling",
           "to_experiment"]
