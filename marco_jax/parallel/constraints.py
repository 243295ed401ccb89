"""Activation sharding constraints by logical axis names, for code that runs under a mesh.

XLA's sharding propagation alone can pick a layout that keeps the batch whole on every chip (e.g.
the lm-head einsum `bce,ev->bcv` with `b` and `e` both split over fsdp: splitting the contraction
leaves full-batch [B, chunk, vocab] logits per chip). `constrain(x, ("batch", "length", "embed"))`
pins an activation to the rules' layout. Outside a mesh context (single device, plain jit) it is
the identity, so model and loss code can call it unconditionally.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from marco_jax.parallel.rules import LOGICAL_AXIS_RULES, Rules, logical_to_spec


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules: Rules = LOGICAL_AXIS_RULES) -> jax.Array:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))
