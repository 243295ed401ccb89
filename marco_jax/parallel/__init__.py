"""Meshes, logical-axis sharding rules, sharded init, cross-mesh restore, multi-host start-up.

Import-light: the AOT fit check (`marco_jax.parallel.aot_fit`) and the TPU slice table
(`marco_jax.parallel.topologies`) are imported from their modules.
"""

from marco_jax.parallel.distributed import initialize_distributed
from marco_jax.parallel.init import abstract_model, sharded_init, sharded_init_state
from marco_jax.parallel.mesh import MESH_AXES, build_mesh, resolve_axis_sizes
from marco_jax.parallel.restore import restore_onto_mesh, save_tree, stored_tree, with_shardings
from marco_jax.parallel.rules import (
    LOGICAL_AXIS_RULES,
    data_parallel_size,
    explain_fallbacks,
    logical_axes_dict,
    logical_to_sharding,
    logical_to_spec,
    pure_dict_shardings,
)

__all__ = [
    "LOGICAL_AXIS_RULES", "MESH_AXES", "abstract_model", "build_mesh", "data_parallel_size",
    "explain_fallbacks", "initialize_distributed", "logical_axes_dict", "logical_to_sharding",
    "logical_to_spec", "pure_dict_shardings", "resolve_axis_sizes", "restore_onto_mesh",
    "save_tree", "sharded_init", "sharded_init_state", "stored_tree", "with_shardings",
]
