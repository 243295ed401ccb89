"""AdamW with warmup + decay, global-norm clipping, a weight-decay mask and a NaN/Inf guard.

Weight decay applies to every matrix, embeddings and the untied lm_head included (the Megatron /
GPT-NeoX convention), and never to biases or RMSNorm scales; `optim.decay_embeddings=False`
also exempts the embedding and lm_head tables.

Non-finite gradients skip the whole update (`optax.apply_if_finite`): params and moments stay as
they were and `total_notfinite` counts the skipped steps; the trainer stops after
`train.max_bad_steps` of them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marco_jax.config.schema import OptimSection

_NEVER_APPLY_BAD = 2**31 - 1  # apply_if_finite would otherwise apply after N consecutive bad steps
SCHEDULES = ("cosine", "linear", "constant")


def make_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to peak_lr, then cosine / linear decay to end_lr_ratio * peak_lr at
    `total_steps` (or constant)."""
    peak = optim.peak_lr
    warmup = (math.ceil(optim.warmup_ratio * total_steps) if optim.warmup_ratio > 0
              else optim.warmup_steps)
    end = peak * optim.end_lr_ratio
    kind = optim.schedule
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule={kind!r}; expected one of {SCHEDULES}")
    if warmup < 0 or total_steps < 1:
        raise ValueError(f"optim.warmup_steps={warmup}, train.steps={total_steps}: need "
                         "warmup_steps >= 0 and steps >= 1")
    decay_steps = max(total_steps - warmup, 1)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any, decay_embeddings: bool = True) -> Any:
    """Bool pytree like `params`: True where weight decay applies."""
    def keep(path, _):
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        leaf, parent = names[-1], names[-2] if len(names) > 1 else ""
        if leaf == "bias" or parent.endswith("norm"):
            return False
        if not decay_embeddings and (leaf == "embedding" or parent == "lm_head"):
            return False
        return True
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    schedule = make_schedule(optim, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                    weight_decay=optim.weight_decay,
                    mask=lambda p: decay_mask(p, optim.decay_embeddings)),
    )
    return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER_APPLY_BAD)


def skipped_steps(opt_state: Any) -> jax.Array:
    """Number of updates skipped for non-finite gradients so far."""
    return jnp.asarray(opt_state.total_notfinite, jnp.int32)


def applied_steps(step: jax.Array, opt_state: Any) -> jax.Array:
    """Updates actually applied: the schedule's position (skipped steps do not advance it)."""
    return step - skipped_steps(opt_state)
