"""Checkpoints on Orbax's public API: converted model checkpoints (`params.py`), a training run's
steps (`run.py`), params-only loading from either (`load.py`), layout checks (`layout.py`) and
the slice-by-slice writer/reader the streaming converter needs (`streaming.py`)."""

from marco_jax.checkpoint.load import given_overrides, load_model, load_params, params_location
from marco_jax.checkpoint.params import (
    read_model_config,
    restore_tree,
    save_params,
    save_tree,
    stored_tree,
)
from marco_jax.checkpoint.run import RunCheckpointer, is_run_workdir, open_run

__all__ = ["RunCheckpointer", "given_overrides", "is_run_workdir", "load_model", "load_params",
           "open_run",
           "params_location", "read_model_config", "restore_tree", "save_params", "save_tree",
           "stored_tree"]
