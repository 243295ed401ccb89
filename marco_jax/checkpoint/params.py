"""Model parameters on disk: our converted checkpoint, and params-only reads of training runs.

A converted checkpoint is `model_config.json` (Qwen2Config) + an Orbax PyTree checkpoint of the
`nnx.to_pure_dict` parameter tree under `params/`. A training run keeps the same tree as the
`params` item of every step (`marco_jax.checkpoint.run`), so `load_params` reads either, and
never touches a run's optimizer state. Restores go through Orbax's `StandardCheckpointer` with a
target of `jax.ShapeDtypeStruct`s carrying the wanted shardings: each device reads only its own
slice and the same checkpoint restores onto any mesh. Paths may be local or gs://.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from marco_jax.model.config import Qwen2Config
from marco_jax.model.init import abstract_model
from marco_jax.parallel.rules import with_shardings
from marco_jax.paths import orbax_path

CONFIG_FILE = "model_config.json"


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silence Orbax's warnings about reading (a read-only manager, an item directory without
    its own _CHECKPOINT_METADATA): they are expected for params-only reads and alarm users."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
PARAMS_DIR = "params"


def write_model_config(path: str | os.PathLike, config: Qwen2Config) -> None:
    orbax_path(path).mkdir(parents=True, exist_ok=True)
    (orbax_path(path) / CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def model_config_from_dict(fields: dict[str, Any], where: str) -> Qwen2Config:
    known = {f.name for f in dataclasses.fields(Qwen2Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: unknown Qwen2Config fields {unknown}")
    return Qwen2Config(**fields)


def read_model_config(path: str | os.PathLike) -> Qwen2Config:
    file = orbax_path(path) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path}: not a converted checkpoint (no {CONFIG_FILE})")
    try:
        fields = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e.msg} at line {e.lineno})") from None
    return model_config_from_dict(fields, str(file))


def abstract_params(config: Qwen2Config) -> dict:
    """Pure-dict tree of ShapeDtypeStructs: exactly what `init_model(config)` would hold."""
    return nnx.to_pure_dict(abstract_model(config)[1])


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


def save_tree(path: str | os.PathLike, tree: Any) -> None:
    """Save a pytree of (possibly sharded) arrays at `path` (overwrites); every process calls it."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(orbax_path(path), tree, force=True)
    checkpointer.wait_until_finished()


def stored_tree(path: str | os.PathLike) -> Any:
    """An Orbax PyTree checkpoint's tree of array metadata (shape, dtype); reads no values."""
    path = orbax_path(path)
    if not (path / "_METADATA").exists():
        raise FileNotFoundError(f"{path}: not an Orbax PyTree checkpoint (no _METADATA)")
    with quiet_orbax():
        return ocp.StandardCheckpointer().metadata(path).item_metadata.tree


def restore_tree(path: str | os.PathLike, shardings: Any = None, dtypes: Any = None) -> Any:
    """Restore the PyTree checkpoint at `path`, every array laid out by `shardings` (a matching
    tree of `jax.sharding.Sharding`; default: the first device) and cast to `dtypes` (a matching
    tree or one dtype, e.g. bf16 serving weights from fp32 training; default: as stored)."""
    stored = stored_tree(path)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, stored)
    try:
        target = with_shardings(stored, shardings)
        if dtypes is not None:
            if not isinstance(dtypes, dict | list | tuple):
                dtypes = jax.tree.map(lambda _: dtypes, stored)
            target = jax.tree.map(
                lambda t, d: jax.ShapeDtypeStruct(t.shape, d, sharding=t.sharding), target, dtypes)
    except ValueError as e:
        raise ValueError(f"{path}: the shardings tree does not match the checkpoint's tree "
                         f"{jax.tree.structure(stored)}: {e}") from None
    with quiet_orbax():
        return ocp.StandardCheckpointer().restore(orbax_path(path), target)


def save_params(path: str | os.PathLike, config: Qwen2Config, params: dict) -> None:
    """Save a pure-dict param tree (jax or numpy arrays) as a converted checkpoint."""
    check_param_shapes(config, {k: tuple(np.shape(v)) for k, v in flat_params(params).items()},
                       "params")
    write_model_config(path, config)
    save_tree(orbax_path(path) / PARAMS_DIR, params)
