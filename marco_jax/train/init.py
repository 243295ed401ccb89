"""Where a run's first parameters come from: a converted HF checkpoint (continual pretraining), a
previous training run (stage II from stage I's final checkpoint), or a fresh sharded init."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from marco_jax.model.config import RUNTIME_FIELDS, Qwen2Config
from marco_jax.paths import orbax_path
from marco_jax.train.checkpointing import ITEM_NAMES


def _arch(config: Qwen2Config) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}


def check_same_architecture(stored: Qwen2Config, run: Qwen2Config, where: str) -> None:
    a, b = _arch(stored), _arch(run)
    diff = [f"{k}: checkpoint {a[k]!r}, config {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise ValueError(f"{where}: architecture differs from the run's model config:\n  "
                         + "\n  ".join(diff))


def initial_params(init_from: str, model_config: Qwen2Config, mesh: Mesh, param_shardings: Any,
                   seed: int, abstract_state: Any = None, state_shardings: Any = None) -> Any:
    """Pure-dict params laid out by `param_shardings`, cast to the run's param dtype.

    init_from: "" -> random init (`marco_jax.parallel.sharded_init_state`, the same values on any
    mesh); a converted checkpoint directory (has model_config.json) -> its weights; a training
    workdir (has checkpoints/) -> the params of its latest step (the optimizer starts afresh:
    stage II from stage I).
    """
    dtype = model_config.jnp_param_dtype
    if not init_from:
        from marco_jax.parallel import sharded_init_state

        _, state = sharded_init_state(model_config, mesh, seed)
        return nnx.to_pure_dict(state)
    path = orbax_path(init_from)
    if (path / "model_config.json").exists():
        from marco_jax.convert.checkpoint import load_params, read_model_config

        check_same_architecture(read_model_config(init_from), model_config, init_from)
        _, params = load_params(init_from, shardings=param_shardings)
    elif (path / "checkpoints").exists():
        manager = ocp.CheckpointManager(path / "checkpoints", item_names=ITEM_NAMES)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"train.init_from={init_from}: checkpoints/ holds no step")
        if abstract_state is None:
            raise ValueError("initialising from a training run needs the abstract train state")
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, state_shardings)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        stored = Qwen2Config(**{**dataclasses.asdict(model_config), **meta["model"]})
        check_same_architecture(stored, model_config, f"{init_from} step {step}")
        params = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"].params
        manager.close()
    else:
        raise FileNotFoundError(f"train.init_from={init_from}: neither a converted checkpoint "
                                "(model_config.json) nor a training workdir (checkpoints/)")
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype != dtype else a, params)
