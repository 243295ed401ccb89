"""Load parameters (params only, never optimizer state) from a converted checkpoint or from a
step of a training run: the one entry used by train (`init_from`), convert, generate and evals."""

from __future__ import annotations

import os
from typing import Any

from flax import nnx

from marco_jax.checkpoint.params import (
    CONFIG_FILE,
    PARAMS_DIR,
    check_param_shapes,
    flat_params,
    read_model_config,
    restore_tree,
    stored_tree,
)
from marco_jax.checkpoint.run import is_run_workdir, open_run
from marco_jax.model.config import RUNTIME_FIELDS, Qwen2Config
from marco_jax.model.init import abstract_model
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.paths import orbax_path


def params_location(path: str | os.PathLike, step: int | None = None) -> tuple[Qwen2Config, str]:
    """(model config, Orbax params directory) of a converted checkpoint, or of step `step`
    (default: the latest) of a training run's workdir."""
    root = orbax_path(path)
    if (root / CONFIG_FILE).exists():
        if step is not None:
            raise ValueError(f"{path}: a converted checkpoint has no steps (step={step})")
        return read_model_config(path), str(root / PARAMS_DIR)
    if is_run_workdir(path):
        run = open_run(path, step)
        return run.config, run.params_dir
    raise FileNotFoundError(f"{path}: neither a converted checkpoint ({CONFIG_FILE}) nor a "
                            "training workdir (checkpoints/)")


def load_params(path: str | os.PathLike, shardings: Any = None, *, step: int | None = None,
                dtype: Any = None) -> tuple[Qwen2Config, dict]:
    """(config, pure-dict params) from a converted checkpoint or a run's step (params only: the
    optimizer state is never read). `shardings`: a matching tree of `jax.sharding.Sharding`
    (e.g. `marco_jax.parallel.pure_dict_shardings(...)` for a mesh); default: first device."""
    config, params_dir = params_location(path, step)
    check_param_shapes(config, {k: tuple(v.shape) for k, v in
                                flat_params(stored_tree(params_dir)).items()},
                       f"checkpoint {params_dir}")
    return config, restore_tree(params_dir, shardings, dtype)


def given_overrides(**fields: str | None) -> dict[str, str]:
    """The runtime overrides a caller gave, for `load_model`: a field left None or "" keeps the
    checkpoint's value (the CLIs' and eval configs' "not set")."""
    return {k: v for k, v in fields.items() if v}


def load_model(path: str | os.PathLike, shardings: Any = None, *, step: int | None = None,
               **runtime_overrides: Any) -> Qwen2ForCausalLM:
    """A ready model from a converted checkpoint or a run's step; runtime fields (`RUNTIME_FIELDS`:
    dtype, param_dtype, matmul_dtype, remat_policy, ...) may be overridden. Params are cast to
    `param_dtype`."""
    bad = sorted(set(runtime_overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ValueError(f"load_model: {bad} are not runtime fields; allowed: {RUNTIME_FIELDS}")
    config, _ = params_location(path, step)
    config = config.replace(**runtime_overrides)
    _, params = load_params(path, shardings, step=step, dtype=config.jnp_param_dtype)
    graphdef, state = abstract_model(config)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
