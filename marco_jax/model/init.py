"""Parameter initialisation straight into shards: no host ever holds the whole model.

The model is built abstractly (`nnx.eval_shape`) to read shapes and logical axes; the real init
runs inside `jax.jit` with `out_shardings`, so each device computes only its own shard. JAX's
partitionable threefry makes the values independent of the mesh: any mesh gives the same numbers
as `init_model(config, seed)` on one device.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from marco_jax.model.config import Qwen2Config
from marco_jax.model.qwen2 import init_model
from marco_jax.parallel.rules import LOGICAL_AXIS_RULES, Rules, logical_to_sharding


def abstract_model(config: Qwen2Config, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStruct Variables with logical-axis metadata); no memory."""
    return nnx.split(nnx.eval_shape(lambda: init_model(config, seed)))


def sharded_init_state(config: Qwen2Config, mesh: Mesh, seed: int = 0,
                       rules: Rules = LOGICAL_AXIS_RULES) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, parameter state) with every parameter created directly in its shards."""
    graphdef, abstract = abstract_model(config, seed)
    shardings = logical_to_sharding(abstract, mesh, rules)

    def init() -> nnx.State:
        return nnx.state(init_model(config, seed))

    return graphdef, jax.jit(init, out_shardings=shardings)()

