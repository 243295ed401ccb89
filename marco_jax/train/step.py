"""The one train step, for any objective (`marco_jax.train.objective`).

`make_train_step(graphdef, tx, objective, ...)` returns `step(state, batch[, reference]) ->
(state, sums)`:
- the global batch is split into `grad_accum_steps` micro-batches run by a `lax.scan`; the
  objective's loss and every statistic are *sums*, the summed gradients are divided once by the
  batch's total `weight` (target tokens, pairs), so m micro-batches give exactly the update of
  one large batch;
- `sums` carries the objective's additive statistics plus `loss_sum`, `grad_norm`, `lr` and
  `skipped_steps`; the loop aggregates them into logged figures with `objective.metrics`.
`jit_train_step` jits it with explicit shardings and a donated state (also the AOT tool's entry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marco_jax.parallel.constraints import trace_under_mesh
from marco_jax.train.objective import Objective
from marco_jax.train.optimizer import applied_steps, skipped_steps
from marco_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]
# Step-level figures that are not additive sums of the objective (last value in a window wins).
STEP_SCALARS = ("grad_norm", "lr", "skipped_steps")


def objective_sums(graphdef: nnx.GraphDef, objective: Objective, params: Any, batch: Batch,
                   reference: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(differentiable loss sum, sums incl. "loss_sum") of one (micro-)batch."""
    model = nnx.merge(graphdef, params)
    ref_model = None if reference is None else nnx.merge(graphdef, reference)
    loss_sum, sums = objective.loss(model, batch, ref_model)
    return loss_sum, {**sums, "loss_sum": jax.lax.stop_gradient(loss_sum)}


def _split_micro(batch: Batch, m: int) -> Batch:
    """[B, ...] -> [m, B/m, ...]; micro-batch i takes rows i, i+m, ... so each one stays spread
    over every data shard (rows are sharded in contiguous blocks)."""
    def split(x):
        b = x.shape[0]
        if b % m:
            raise ValueError(f"global batch {b} is not divisible by grad_accum_steps={m}")
        return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)
    return {k: split(batch[k]) for k in batch}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    objective: Objective, schedule: optax.Schedule, grad_accum_steps: int = 1
                    ) -> Callable[..., tuple[TrainState, dict]]:
    grad_fn = jax.grad(lambda p, b, r: objective_sums(graphdef, objective, p, b, r), has_aux=True)

    def step(state: TrainState, batch: Batch, reference: Any = None) -> tuple[TrainState, dict]:
        batch = {k: batch[k] for k in objective.batch_keys}
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, reference)
        else:
            micro = _split_micro(batch, grad_accum_steps)

            def body(carry, mb):
                return jax.tree.map(jnp.add, carry, grad_fn(state.params, mb, reference)), None
            zero = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro),
                                  reference)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (grads, sums), _ = jax.lax.scan(body, zero, micro)
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sums = {**sums, "grad_norm": optax.global_norm(grads),
                "lr": schedule(applied_steps(state.step, state.opt_state)),
                "skipped_steps": skipped_steps(opt_state)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), sums

    return step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective) -> Callable[..., dict]:
    """Held-out sums with the objective's own loss (no gradient)."""
    def step(params: Any, batch: Batch, reference: Any = None) -> dict:
        batch = {k: batch[k] for k in objective.batch_keys}
        return objective_sums(graphdef, objective, params, batch, reference)[1]
    return step


def jit_train_step(step: Callable, state_shardings: Any, batch_sharding: Any,
                   mesh: Mesh | None, reference_shardings: Any = None) -> Callable:
    """jax.jit with explicit in/out shardings and the state donated. Returns the jit object so
    `.lower(...)`/`.compile()` work (the AOT tool). Sums come back replicated. Under a mesh the
    step is traced with its abstract mesh set, which switches on the model's activation
    constraints (`marco_jax.parallel.constraints`)."""
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated = NamedSharding(mesh, PartitionSpec())
    in_shardings = (state_shardings, batch_sharding)
    if reference_shardings is not None:  # step(state, batch, reference)
        in_shardings += (reference_shardings,)
    return jax.jit(trace_under_mesh(step, mesh), in_shardings=in_shardings,
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
