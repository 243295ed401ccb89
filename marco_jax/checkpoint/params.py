"""Our converted checkpoint: `model_config.json` (Qwen2Config) + an Orbax PyTree checkpoint of the
`nnx.to_pure_dict` parameter tree under `params/`.

Restoring goes through Orbax's standard `StandardCheckpointer.restore` with a target of
`jax.ShapeDtypeStruct`s carrying the wanted shardings, so each device reads only its own slice and
the same checkpoint restores onto any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from marco_jax.model.config import RUNTIME_FIELDS, Qwen2Config
from marco_jax.model.qwen2 import Qwen2ForCausalLM, init_model
from marco_jax.paths import orbax_path

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def write_model_config(path: str | os.PathLike, config: Qwen2Config) -> None:
    orbax_path(path).mkdir(parents=True, exist_ok=True)
    (orbax_path(path) / CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_model_config(path: str | os.PathLike) -> Qwen2Config:
    file = orbax_path(path) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path}: not a converted checkpoint (no {CONFIG_FILE})")
    fields = json.loads(file.read_text())
    known = {f.name for f in dataclasses.fields(Qwen2Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{file}: unknown Qwen2Config fields {unknown}")
    return Qwen2Config(**fields)


def abstract_params(config: Qwen2Config) -> dict:
    """Pure-dict tree of ShapeDtypeStructs: exactly what `init_model(config)` would hold."""
    model = nnx.eval_shape(lambda: init_model(config))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flat_params(tree: Any) -> dict[tuple[str, ...], Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(str(getattr(k, "key", k)) for k in path): v for path, v in flat}


def check_param_shapes(config: Qwen2Config, found: dict[tuple[str, ...], tuple[int, ...]],
                       where: str) -> None:
    """One error naming every missing, unexpected or mis-shaped parameter."""
    expected = {k: tuple(v.shape) for k, v in flat_params(abstract_params(config)).items()}
    problems = [f"missing {'.'.join(k)} (expected shape {list(s)})"
                for k, s in expected.items() if k not in found]
    problems += [f"unexpected {'.'.join(k)} (shape {list(s)})"
                 for k, s in found.items() if k not in expected]
    problems += [f"mis-shaped {'.'.join(k)}: shape {list(found[k])}, expected {list(s)}"
                 for k, s in expected.items() if k in found and tuple(found[k]) != s]
    if problems:
        raise ValueError(f"{where} does not match the model config:\n  " + "\n  ".join(problems))


def save_params(path: str | os.PathLike, config: Qwen2Config, params: dict) -> None:
    """Save a pure-dict param tree (jax or numpy arrays) with Orbax; overwrites `path/params`."""
    check_param_shapes(config, {k: tuple(np.shape(v)) for k, v in flat_params(params).items()},
                       "params")
    path = orbax_path(path)
    write_model_config(path, config)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()


def load_params(path: str | os.PathLike, shardings: Any = None) -> tuple[Qwen2Config, dict]:
    """(config, pure-dict params). `shardings`: a pytree of jax.sharding.Sharding matching the
    param tree (e.g. from `marco_jax.parallel.logical_to_sharding`); default: first device."""
    path = orbax_path(path)
    config = read_model_config(path)
    params_dir = path / PARAMS_DIR
    if not (params_dir / "_METADATA").exists():
        raise FileNotFoundError(f"{path}: no Orbax checkpoint under {PARAMS_DIR}/")
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(params_dir).item_metadata.tree
    check_param_shapes(config, {k: tuple(v.shape) for k, v in flat_params(stored).items()},
                       f"checkpoint {params_dir}")
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, stored)
    try:
        target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                              stored, shardings)
    except ValueError as e:
        raise ValueError(f"shardings tree does not match the checkpoint's param tree: "
                         f"{e}") from None
    return config, checkpointer.restore(params_dir, target)


def load_model(path: str | os.PathLike, shardings: Any = None,
               **runtime_overrides: Any) -> Qwen2ForCausalLM:
    """A ready model from a converted checkpoint; runtime fields (dtype, param_dtype, remat_policy,
    scan_layers, attention_impl) may be overridden. Params are cast to `param_dtype`."""
    bad = sorted(set(runtime_overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ValueError(f"load_model: {bad} are not runtime fields; allowed: {RUNTIME_FIELDS}")
    config, params = load_params(path, shardings)
    config = config.replace(**runtime_overrides)
    params = jax.tree.map(lambda a: a.astype(config.jnp_param_dtype), params)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: init_model(config)))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
