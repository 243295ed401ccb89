"""The one causal-LM train step (CPT; SFT reuses it with a loss mask on assistant tokens).

`make_train_step(graphdef, tx, config)` returns `step(state, batch) -> (state, metrics)`:
- the global batch [B, T] is split into `optim.grad_accum_steps` micro-batches run by a
  `lax.scan`; gradients and loss are *sums* over target tokens, divided once by the batch's total
  target-token count, so m micro-batches give the same update as one large batch;
- the loss is token-mean cross-entropy on `loss_mask` tokens, computed chunk-wise over the
  sequence (marco_jax.train.loss) so [tokens, vocab] logits never exist at once;
- per-source loss sums and token counts come out of the same pass (the forgetting monitor).
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

from marco_jax.parallel.constraints import RESIDUAL, constrain, trace_under_mesh
from marco_jax.train.loss import per_source_sums, weighted_nll_sum
from marco_jax.train.optimizer import applied_steps, make_schedule, skipped_steps
from marco_jax.train.state import TrainState

BATCH_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask", "source_ids")
Batch = Mapping[str, jax.Array]


def lm_loss_sums(graphdef: nnx.GraphDef, params: Any, batch: Batch, num_sources: int,
                 loss_chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum of target-token nll [differentiable], aux sums) for one (micro-)batch."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
    # Rows stay split over data x fsdp into the loss (else XLA may gather the batch to match
    # the fsdp-split lm-head kernel); identity without a mesh.
    hidden = constrain(hidden, RESIDUAL)
    mask = batch["loss_mask"].astype(jnp.float32)
    loss_sum, nll = weighted_nll_sum(hidden, model.lm_head_kernel(), batch["targets"], mask,
                                     loss_chunk)
    aux = {"loss_sum": loss_sum, "tokens": jnp.sum(mask)}
    if num_sources:
        aux["source_loss_sum"], aux["source_tokens"] = per_source_sums(
            nll, mask, batch["source_ids"], num_sources)
    return loss_sum, aux


def _split_micro(batch: Batch, m: int) -> Batch:
    """[B, T] -> [m, B/m, T]; micro-batch i takes rows i, i+m, ... so each one stays spread over
    every data shard (rows are sharded in contiguous blocks)."""
    def split(x):
        b = x.shape[0]
        if b % m:
            raise ValueError(f"global batch {b} is not divisible by grad_accum_steps={m}")
        return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)
    return {k: split(batch[k]) for k in batch}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Any,
                    num_sources: int | None = None) -> Callable[[TrainState, Batch],
                                                                tuple[TrainState, dict]]:
    """config: the experiment ConfigDict (reads optim.*, train.steps, train.loss_chunk and
    data.num_sources unless `num_sources` is given)."""
    accum = int(config.optim.grad_accum_steps)
    loss_chunk = int(config.train.get("loss_chunk", 0))
    if num_sources is None:
        num_sources = int(config.data.get("num_sources", 0))
    schedule = make_schedule(config.optim, int(config.train.steps))
    grad_fn = jax.grad(lambda p, b: lm_loss_sums(graphdef, p, b, num_sources, loss_chunk),
                       has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        batch = {k: batch[k] for k in BATCH_KEYS if k in batch}
        if accum == 1:
            grads, aux = grad_fn(state.params, batch)
        else:
            def body(carry, micro):
                g, a = grad_fn(state.params, micro)
                return jax.tree.map(jnp.add, carry, (g, a)), None
            zero = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0],
                                                                      _split_micro(batch, accum)))
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (grads, aux), _ = jax.lax.scan(body, zero, _split_micro(batch, accum))
        denom = jnp.maximum(aux["tokens"], 1.0)
        grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": aux["loss_sum"] / denom,
            "tokens": aux["tokens"],
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(applied_steps(state.step, state.opt_state)),
            "skipped_steps": skipped_steps(opt_state),
        }
        if num_sources:
            metrics["source_loss_sum"] = aux["source_loss_sum"]
            metrics["source_tokens"] = aux["source_tokens"]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch rows over the mesh axes of the `batch` logical-axis rule (data and fsdp)."""
    from marco_jax.parallel.rules import LOGICAL_AXIS_RULES

    axes = tuple(a for a in dict(LOGICAL_AXIS_RULES)["batch"] if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def jit_train_step(step: Callable, state_shardings: Any, batch_sharding: Any,
                   mesh: Mesh | None) -> Callable:
    """jax.jit with explicit in/out shardings and the state donated. Returns the jit object so
    `.lower(...)`/`.compile()` work (the AOT tool). Metrics come back replicated. Under a mesh the
    step is traced with its abstract mesh set, which switches on the model's activation
    constraints (`marco_jax.parallel.constraints`)."""
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(trace_under_mesh(step, mesh), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
