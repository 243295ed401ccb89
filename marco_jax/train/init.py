"""Where a run's first parameters come from: a converted HF checkpoint (continual pretraining), a
previous training run (stage II from stage I's final step; its params only, the optimizer starts
afresh and its moments are never read), or a fresh sharded init."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from marco_jax.checkpoint.layout import architecture_mismatches
from marco_jax.checkpoint.load import load_params, params_location
from marco_jax.model.config import Qwen2Config
from marco_jax.model.init import sharded_init_state


def initial_params(init_from: str, model_config: Qwen2Config, mesh: Mesh, param_shardings: Any,
                   seed: int) -> Any:
    """Pure-dict params laid out by `param_shardings`, in the run's param dtype.

    init_from: "" -> random init (the same values on any mesh); a converted checkpoint directory
    (model_config.json) or a training workdir (checkpoints/, its latest step) -> its weights.
    """
    if not init_from:
        _, state = sharded_init_state(model_config, mesh, seed)
        return nnx.to_pure_dict(state)
    stored, _ = params_location(init_from)
    problems = architecture_mismatches(dataclasses.asdict(stored), model_config,
                                       ignore=("param_dtype",))
    if problems:
        raise ValueError(f"train.init_from={init_from}: architecture differs from the run's "
                         "model config:\n  " + "\n  ".join(problems))
    dtype = model_config.jnp_param_dtype
    _, params = load_params(init_from, param_shardings, dtype=dtype)
    return jax.tree.map(lambda a: a if a.dtype == dtype else a.astype(dtype), params)
