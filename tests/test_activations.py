"""`silu_mul` (marco_jax/model/activations.py): its hand-written backward pass against JAX's
autodiff of the plain expression, and a value by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marco_jax.model.activations import silu_mul


def _plain(g, u):
    return jax.nn.silu(g) * u


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_silu_mul_equals_autodiff(dtype, atol):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    g = (4 * jax.random.normal(keys[0], (64, 96))).astype(dtype)  # both tails of the sigmoid
    u = jax.random.normal(keys[1], (64, 96)).astype(dtype)
    probe = jax.random.normal(keys[2], (64, 96)).astype(dtype)
    np.testing.assert_allclose(np.float32(silu_mul(g, u)), np.float32(_plain(g, u)), atol=atol)

    def loss(fn):
        return lambda g, u: jnp.sum((fn(g, u) * probe).astype(jnp.float32))
    ours = jax.jit(jax.grad(loss(silu_mul), argnums=(0, 1)))(g, u)
    ref = jax.jit(jax.grad(loss(_plain), argnums=(0, 1)))(g, u)
    for name, a, b in zip(("d_gate", "d_up"), ours, ref, strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=atol, rtol=atol,
                                   err_msg=name)


def test_silu_mul_gradient_by_hand():
    # g = 1, u = 2: s = 1/(1+e^-1); d/dg = u (s + g s (1 - s)); d/du = g s
    s = 1 / (1 + math.exp(-1))
    d_gate, d_up = jax.grad(silu_mul, argnums=(0, 1))(jnp.float32(1), jnp.float32(2))
    np.testing.assert_allclose(float(d_gate), 2 * (s + s * (1 - s)), rtol=1e-6)
    np.testing.assert_allclose(float(d_up), s, rtol=1e-6)
