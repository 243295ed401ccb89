"""The one table mapping the model's logical axis names to mesh axes, and shardings derived from it.

Every parameter carries `logical_axes` metadata (marco_jax/model/qwen2.py); activations use
`batch`/`length`. A logical axis maps to a tuple of mesh axes (its dimension is split over their
product). When a dimension is not divisible by that product (e.g. 2 KV heads over tensor=4) the
trailing mesh axes are dropped until it divides, down to replication; `explain_fallbacks` lists
such cases so that a config author sees them. A mesh axis is used once per array: dimensions claim
axes in the order of the table (earlier rules first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, tuple[str, ...]]]

LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),  # data parallel over both; fsdp also shards the weights
    ("length", ()),
    # Embedding / lm-head tables split on vocab over tensor *and* fsdp (listed before `embed`, so
    # they win fsdp): with `embed` split instead, XLA contracts the sharded embed dimension of the
    # lm head and materialises full-batch [B, chunk, vocab] logits on every chip.
    ("vocab", ("tensor", "fsdp")),
    ("embed", ("fsdp",)),  # ZeRO-3: every other weight is split over fsdp on its model dim
    ("heads", ("tensor",)),  # Megatron-style: attention heads and the MLP hidden over tensor
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("layers", ()),
    ("norm", ()),
)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for an array of `shape` whose dimensions carry `logical_axes`."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    table = dict(rules)
    for name in logical_axes:
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    priority = {name: i for i, (name, _) in enumerate(rules)}
    # Dimensions claim mesh axes in rule-table order: earlier rules win a contested mesh axis.
    order = sorted((i for i, n in enumerate(logical_axes) if n is not None),
                   key=lambda i: priority[logical_axes[i]])
    used: set[str] = set()
    spec: list[Any] = [None] * len(shape)
    for i in order:
        axes = [a for a in table[logical_axes[i]] if a in mesh.shape and a not in used]
        while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        used.update(axes)
        spec[i] = None if not axes else axes[0] if len(axes) == 1 else tuple(axes)
    return P(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _axes_and_shape(leaf: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    meta = leaf.get_metadata()
    if "logical_axes" not in meta:
        raise ValueError(f"variable {type(leaf).__name__} of shape {leaf.shape} has no "
                         "`logical_axes` metadata")
    return tuple(meta["logical_axes"]), tuple(leaf.get_value().shape)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding for every nnx.Variable of `abstract_tree` (an nnx.State, e.g. from
    `nnx.split(nnx.eval_shape(...))`), read from its `logical_axes` metadata. The result has one
    NamedSharding where each Variable was, so it is a valid sharding prefix for that state."""
    def one(var: Any) -> NamedSharding:
        axes, shape = _axes_and_shape(var)
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))
    return jax.tree.map(one, abstract_tree, is_leaf=_is_variable)


def pure_dict_shardings(state: nnx.State, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> dict:
    """Like `logical_to_sharding` but laid out as `nnx.to_pure_dict(state)` (the checkpoint and
    train-state layout)."""
    return nnx.to_pure_dict(logical_to_sharding(state, mesh, rules))


def explain_fallbacks(state: nnx.State, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> list[str]:
    """Human-readable lines for each parameter dimension left less sharded than its rule asks
    because of divisibility (a mesh axis its rule names that the array uses nowhere)."""
    table, lines = dict(rules), []
    for path, var in nnx.to_flat_state(state):
        axes, shape = _axes_and_shape(var)
        spec = logical_to_spec(axes, shape, mesh, rules)
        for name, dim in zip(axes, shape, strict=True):
            want = [a for a in table.get(name, ()) if mesh.shape.get(a, 1) > 1]
            missing = [a for a in want if a not in _axes_in(spec)]
            if missing:
                lines.append(f"{'/'.join(map(str, path))}: {name}={dim} not split over "
                             f"{missing} (mesh {dict(mesh.shape)})")
    return lines


def _axes_in(spec: P) -> set[str]:
    out: set[str] = set()
    for entry in spec:
        out.update(() if entry is None else (entry,) if isinstance(entry, str) else entry)
    return out


def data_parallel_size(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> int:
    """How many ways the batch rows are split (the product of the `batch` rule's mesh axes)."""
    return math.prod(mesh.shape[a] for a in dict(rules)["batch"] if a in mesh.shape)


def batch_sharding(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
    """Batch rows over the mesh axes of the `batch` rule (data and fsdp), the rest whole."""
    axes = tuple(a for a in dict(rules)["batch"] if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes or None))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` (arrays or structs) carrying `shardings` (a matching
    tree): the target of a sharded restore or an ahead-of-time lowering."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
