"""CPU matmuls of the model: a Linear's contraction as one 2-D matmul, in the matmul dtype.

`Qwen2Config.matmul_dtype` ("": the compute dtype) rounds both operands of every Linear and
lm-head matmul to that dtype; products accumulate in float32 and come back in the compute dtype.
With `dtype=float32, matmul_dtype=bfloat16` norms, softmax, RoPE and the residual stream stay
float32 while the matmuls run on bf16 hardware: the mixed precision of `torch.autocast`. On CPUs
with AMX (Intel Sapphire Rapids and later) XLA:CPU runs bf16 x bf16 -> f32 dots on AMX tiles at
several times its float32 rate; elsewhere it computes the same numbers more slowly.

What XLA:CPU (jaxlib 0.10.2, YNNPACK dots) needs for that, measured on [4096, 384] x [384, 1536]:
- bf16 operands *and* a float32 result (`preferred_element_type`): a bf16-result dot, or one
  mixing f32 and bf16 operands, is rewritten as a float32 dot on converted copies. JAX's own
  backward of such a dot multiplies the float32 cotangent with a bf16 operand, so `flat_matmul`
  has its own VJP that rounds the cotangent first (input gradient: 6 vs 30 ms in float32);
- the weight gradient x^T g contracts the leading axis of its left operand, a form with no bf16
  kernel (upcast to float32: 28 ms), and XLA folds a transpose inserted before the dot back into
  it; a transposed copy built as the concatenation of two transposed halves stays a separate
  row-major operand and the dot runs in bf16 (9 ms with the copy; `transposed_copy`);
- a bf16 dot with a single row takes a slow path outside a loop ([1, 384] x [384, 32000]: ~18 ms,
  vs 1.2 ms for two rows or in float32) and inside one is rewritten as a float32 dot whose
  weight converts XLA hoists out of the loop: a batch-1 `generate` with bf16 matmuls held a
  float32 copy of every weight (qwen2-0.5b: 1.4 GB of temporaries). `dot_rows_padded` pads one
  row to two (the lm head and the Linear forward).
On TPU and GPU the Linear keeps its N-D einsum (qwen2.py) with the same operand rounding and
JAX's own backward pass, whose input gradient multiplies the unrounded fp32 cotangent; on CPU it
is rounded to bf16 first, so gradients differ between platforms at bf16 resolution. The lm head's
kernel gradient comes back through its bf16 copy (`lm_head_kernel`), so it is rounded to bf16;
the Linear weight gradients are not (they are fp32 sums returned in the parameter's dtype).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_F32 = jnp.dtype(jnp.float32)


def dot_rows(x: jax.Array, w: jax.Array, contract_w: int = 0) -> jax.Array:
    """x [M, K] times w ([K, N] with contract_w=0, [N, K] with 1) -> [M, N] float32, products
    accumulated in float32."""
    return jax.lax.dot_general(x, w, (((1,), (contract_w,)), ((), ())),
                               preferred_element_type=jnp.float32)


def dot_rows_padded(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [M, K] @ w [K, N] (same dtype) -> float32 [M, N]; a single low-precision row is padded
    to two (module doc)."""
    if x.shape[0] == 1 and x.dtype != _F32:
        return dot_rows(jnp.concatenate([x, jnp.zeros_like(x)]), w)[:1]
    return dot_rows(x, w)


def transposed_copy(x: jax.Array) -> jax.Array:
    """x [M, K] (M >= 2) -> x.T [K, M] as a row-major array: the concatenation of its two halves'
    transposes. XLA folds a plain transpose feeding a dot into the dot's dimension numbers, which
    turns x^T g into the transposed-lhs form that has no low-precision kernel (module doc)."""
    half = x.shape[0] // 2
    return jnp.concatenate([x[:half].T, x[half:].T], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _rounded_matmul(x: jax.Array, w: jax.Array, operand_dtype: jnp.dtype, x_dtype: jnp.dtype,
                    w_dtype: jnp.dtype) -> jax.Array:
    return dot_rows_padded(x.astype(operand_dtype), w.astype(operand_dtype)).astype(x_dtype)


def _rounded_fwd(x, w, operand_dtype, x_dtype, w_dtype):
    x_low, w_low = x.astype(operand_dtype), w.astype(operand_dtype)
    return dot_rows_padded(x_low, w_low).astype(x_dtype), (x_low, w_low)


def rounded_matmul_grads(x_low: jax.Array, w_low: jax.Array, g: jax.Array, x_dtype: jnp.dtype,
                         w_dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """Gradients of x_low [M, K] @ w_low [K, N] (both in a low-precision dtype) for the output
    cotangent g [M, N], rounded to that dtype first: (dx in x_dtype, dw in w_dtype), products
    accumulated in float32, in the forms XLA:CPU runs on bf16 kernels (module doc)."""
    g_low = g.astype(w_low.dtype)
    dx = dot_rows(g_low, w_low, contract_w=1)
    if x_low.shape[0] > 1:
        dw = dot_rows(transposed_copy(x_low), g_low)
    else:
        dw = jnp.outer(x_low[0].astype(jnp.float32), g_low[0].astype(jnp.float32))
    return dx.astype(x_dtype), dw.astype(w_dtype)


def _rounded_bwd(operand_dtype, x_dtype, w_dtype, residuals, g):
    return rounded_matmul_grads(*residuals, g, x_dtype, w_dtype)


_rounded_matmul.defvjp(_rounded_fwd, _rounded_bwd)


def flat_matmul(x: jax.Array, kernel: jax.Array, contract_dims: int,
                operand_dtype: jnp.dtype | None = None) -> jax.Array:
    """x [..., k1..kc] @ kernel [k1..kc, n...] -> [..., n...] in x's dtype, as one 2-D matmul.

    XLA:CPU runs the backward pass of an N-D dot_general through transposing copies of the
    activations (1.5-1.7x slower than the 2-D form on the MLP of a 384-wide model). Both
    operands are rounded to `operand_dtype` (default: x's dtype); a low-precision one takes the
    float32-accumulating forward, input-gradient and weight-gradient matmuls of the module doc.
    The gradients come back in x's and kernel's dtypes."""
    k_in = math.prod(kernel.shape[:contract_dims])
    lead, out = x.shape[: x.ndim - contract_dims], kernel.shape[contract_dims:]
    x2, k2 = x.reshape(-1, k_in), kernel.reshape(k_in, -1)
    operand_dtype = jnp.dtype(x.dtype if operand_dtype is None else operand_dtype)
    if operand_dtype == _F32:
        y = (x2.astype(_F32) @ k2.astype(_F32)).astype(x.dtype)
    else:
        y = _rounded_matmul(x2, k2, operand_dtype, x.dtype, k2.dtype)
    return y.reshape(*lead, *out)
