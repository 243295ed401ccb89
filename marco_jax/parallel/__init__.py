"""Meshes, logical-axis sharding rules and constraints, TPU slices, multi-host start-up: the leaf
layer every other package may use (it imports no model code)."""

from marco_jax.parallel.distributed import initialize_distributed
from marco_jax.parallel.mesh import MESH_AXES, build_mesh, resolve_axis_sizes, slice_count
from marco_jax.parallel.rules import (
    LOGICAL_AXIS_RULES,
    batch_sharding,
    data_parallel_size,
    explain_fallbacks,
    logical_to_sharding,
    logical_to_spec,
    pure_dict_shardings,
    with_shardings,
)

__all__ = [
    "LOGICAL_AXIS_RULES", "MESH_AXES", "batch_sharding", "build_mesh", "data_parallel_size",
    "explain_fallbacks", "initialize_distributed", "logical_to_sharding", "logical_to_spec",
    "pure_dict_shardings", "resolve_axis_sizes", "slice_count", "with_shardings",
]
