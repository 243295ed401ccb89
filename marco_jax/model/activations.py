"""The MLP's gated activation, silu(gate) * up, with its own backward pass for XLA:CPU.

Autodiff of `jax.nn.silu(g) * u` keeps sigmoid(g) and silu(g) as residuals, and XLA:CPU ran the
forward as three passes over the [tokens, intermediate] activations (sigmoid, silu, product),
each written out. `silu_mul` keeps only g and u (the two matmul outputs, alive anyway) and runs
forward and backward as one elementwise pass each. Measured on a 2-core CPU, 6 layers of width
384 / 1,536 at batch 8 x 512, layers fwd+bwd 3.05 -> 2.89 s (median of 10, interleaved). The
accelerator path keeps the plain expression (`marco_jax.model.qwen2.MLP`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def silu_mul(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, elementwise, in the operands' dtype."""
    return jax.nn.silu(gate) * up


def _silu_mul_fwd(gate, up):
    return silu_mul(gate, up), (gate, up)


def _silu_mul_bwd(residuals, d_out):
    gate, up = residuals
    g, u, dy = (x.astype(jnp.float32) for x in (gate, up, d_out))
    sig = jax.nn.sigmoid(g)
    silu = g * sig
    d_gate = dy * u * (sig + silu * (1.0 - sig))  # d silu / dg = s + g s (1 - s)
    return (d_gate.astype(gate.dtype), (dy * silu).astype(up.dtype))


silu_mul.defvjp(_silu_mul_fwd, _silu_mul_bwd)
