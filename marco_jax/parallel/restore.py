"""Restore an Orbax PyTree checkpoint onto any mesh, whatever mesh it was saved from.

Orbax stores each array whole (tensorstore chunks, no mesh baked in); restoring with a target of
`jax.ShapeDtypeStruct`s that carry the *new* shardings makes every host read only the slices its
devices own. Shapes and dtypes come from the checkpoint's own metadata, so callers pass only the
shardings (e.g. `pure_dict_shardings(...)` or `train_state_shardings(...)` for the new mesh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_tree(path: str | Path, tree: Any) -> None:
    """Save a pytree of (possibly sharded) arrays as an Orbax checkpoint at `path` (overwrites);
    every process must call it (multi-host)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).absolute(), tree, force=True)
    checkpointer.wait_until_finished()


def stored_tree(path: str | Path) -> Any:
    """The checkpoint's tree of array metadata (shape, dtype) without reading any values."""
    path = Path(path).absolute()
    if not (path / "_METADATA").exists():
        raise FileNotFoundError(f"{path}: not an Orbax PyTree checkpoint (no _METADATA)")
    return ocp.StandardCheckpointer().metadata(path).item_metadata.tree


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying `shardings` (a matching tree or a prefix)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def restore_onto_mesh(path: str | Path, shardings: Any, dtypes: Any = None) -> Any:
    """Restore the checkpoint at `path` with every array laid out by `shardings` (a pytree of
    `jax.sharding.Sharding` with the checkpoint's structure). `dtypes`: an optional matching
    tree (or a single dtype) to cast to on read, e.g. bf16 serving weights from fp32 training."""
    stored = stored_tree(path)
    if dtypes is not None and not isinstance(dtypes, (dict, list, tuple)):
        dtypes = jax.tree.map(lambda _: dtypes, stored)
    try:
        target = with_shardings(stored, shardings)
        if dtypes is not None:
            target = jax.tree.map(
                lambda t, d: jax.ShapeDtypeStruct(t.shape, d, sharding=t.sharding), target, dtypes)
    except ValueError as e:
        raise ValueError(f"{path}: the shardings tree does not match the checkpoint's tree "
                         f"{jax.tree.structure(stored)}: {e}") from None
    return ocp.StandardCheckpointer().restore(Path(path).absolute(), target)
