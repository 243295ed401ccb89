"""The train state: one pytree (step, params, opt_state) that is jitted, sharded and checkpointed.

`params` is the nested dict of arrays of `nnx.to_pure_dict(nnx.split(model)[1])` — the same layout
as converted checkpoints — so the model is rebuilt inside the step with `nnx.merge(graphdef,
params)` and nothing NNX-specific ends up in a checkpoint.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: batches consumed (skipped bad steps included)
    params: Any  # nested dict of arrays (nnx.to_pure_dict layout)
    opt_state: optax.OptState

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStruct TrainState for abstract (or concrete) params."""
    return jax.eval_shape(lambda p: TrainState.create(p, tx), params)


def train_state_shardings(abstract_state: TrainState, param_shardings: Any, mesh: Mesh,
                          tx: optax.GradientTransformation) -> TrainState:
    """Shardings for every leaf of the state: optimizer moments follow their params, every
    other optimizer leaf (counts, flags) is replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = optax.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state, param_shardings,
                                transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt)
