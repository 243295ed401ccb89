"""Activation sharding constraints by logical axis names, for code that runs under a mesh.

XLA's sharding propagation alone can pick a layout that keeps the batch whole on every chip (e.g.
the lm-head einsum `bce,ev->bcv` with `b` and `e` both split over fsdp: splitting the contraction
leaves full-batch [B, chunk, vocab] logits per chip). `constrain(x, RESIDUAL)` pins an activation
to the rules' layout. Outside an abstract-mesh context (single device, plain jit, generation) it
is the identity, so model and loss code can call it unconditionally; `trace_under_mesh` gives a
function that traces under a mesh's abstract mesh, which is how a jitted step switches it on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from marco_jax.parallel.rules import LOGICAL_AXIS_RULES, Rules, logical_to_spec

# The residual stream / hidden state [batch, length, embed]: rows over data x fsdp (the `batch`
# rule claims fsdp first, so `embed` stays whole unless the rows cannot be split that far).
RESIDUAL = ("batch", "length", "embed")


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules: Rules = LOGICAL_AXIS_RULES) -> jax.Array:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


def trace_under_mesh(fn: Callable[..., Any], mesh: Mesh | None) -> Callable[..., Any]:
    """`fn` traced with `mesh`'s abstract mesh set, so the `constrain` calls inside it take
    effect (jit it afterwards). `mesh=None`: `fn` itself."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)
    return wrapped
