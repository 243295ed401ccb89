"""Log-probabilities and cross-entropy over a large vocabulary without materialising
[tokens, vocab] logits: the one home of the chunked lm-head computation (training losses, DPO
sequence log-probs, scoring for evals).

The lm-head matmul and the softmax run over chunks of the sequence axis (the batch axis stays
whole, so data/FSDP sharding of the batch is untouched). Entry points:

- `target_logprobs`: per-token log-prob of the target and whether it is the argmax (scoring; no
  gradient needed).

- `token_nll`: per-token negative log-likelihood, differentiable with respect to hidden and kernel
  through a rematerialised scan (each chunk's logits are recomputed in the backward pass). General:
  any cotangent per token (DPO, scoring).
- `weighted_nll_sum`: sum_i w_i * nll_i for fixed weights (the LM training loss). Its gradient is
  computed *in the forward pass* (a custom VJP, the "fused linear cross-entropy" trick), so the
  head costs the minimum three matmuls and one chunk of logits at a time — no recomputation.
  Its second output, the per-token nll, carries no gradient.

`logits_dtype` (training losses; `Qwen2Config.logits_dtype`): the dtype the lm-head matmul writes
its logits chunk in. float32 (default) keeps them exact; bfloat16 halves the head's HBM traffic,
the largest single item of a bf16 TPU step outside the layers (what MaxText and transformers do
in bf16). The max / exp / log-sum-exp / gradient math is fp32 either way. Scoring
(`target_logprobs`) always uses float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from marco_jax.model.matmul import rounded_matmul_grads
from marco_jax.model.target import target_platform


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, ...] -> [T // chunk, B, chunk, ...] (T must be a multiple of chunk)."""
    b, t = x.shape[:2]
    return jnp.swapaxes(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
    """[n, B, chunk, ...] -> [B, n * chunk, ...]."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _chunk_len(seq_len: int, chunk: int) -> int:
    """The largest divisor of seq_len that is <= chunk (chunk <= 0: the whole sequence)."""
    if chunk <= 0 or chunk >= seq_len:
        return seq_len
    while seq_len % chunk:
        chunk -= 1
    return chunk


def _chunk_logits(h: jax.Array, kernel: jax.Array, dtype: str = "float32") -> jax.Array:
    """fp32 logits of one chunk, as stored (rounded to `dtype`) by the matmul; h is rounded to
    the kernel's dtype (the matmul dtype, `Qwen2ForCausalLM.lm_head_kernel`)."""
    logits = jnp.einsum("bce,ev->bcv", h.astype(kernel.dtype), kernel,
                        preferred_element_type=jnp.dtype(dtype))
    return logits.astype(jnp.float32)


def _nll_from_logits(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - target_logit, lse


def target_logprobs(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                    chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """hidden [B,T,E], kernel [E,V], targets [B,T] -> (log p(target) [B,T] fp32, target is the
    argmax [B,T] bool)."""
    c = _chunk_len(hidden.shape[1], chunk)

    def one(xs):
        h, t = xs
        logits = _chunk_logits(h, kernel)
        nll, _ = _nll_from_logits(logits, t)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return -nll, picked >= jnp.max(logits, axis=-1)

    logprob, is_argmax = jax.lax.map(one, (_chunks(hidden, c), _chunks(targets, c)))
    return _unchunk(logprob), _unchunk(is_argmax)


def token_nll(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
              chunk: int = 0, logits_dtype: str = "float32") -> jax.Array:
    """hidden [B,T,E], kernel [E,V], targets [B,T] int -> nll [B,T] fp32 (differentiable)."""
    c = _chunk_len(hidden.shape[1], chunk)
    # A kernel in another dtype than the hidden states (`matmul_dtype`) is closed over in fp32 and
    # rounded inside each chunk, so the scan sums its gradient over chunks in fp32, not bf16.
    low = kernel.dtype if kernel.dtype != hidden.dtype else None
    if low is not None:
        kernel = kernel.astype(jnp.float32)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one(h, t):
        k = kernel if low is None else kernel.astype(low)
        return _nll_from_logits(_chunk_logits(h, k, logits_dtype), t)[0]

    def body(carry, xs):
        return carry, one(*xs)

    _, nll = jax.lax.scan(body, None, (_chunks(hidden, c), _chunks(targets, c)))
    return _unchunk(nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def weighted_nll_sum(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                     weights: jax.Array, chunk: int = 0,
                     logits_dtype: str = "float32") -> tuple[jax.Array, jax.Array]:
    """-> (sum_i weights_i * nll_i [scalar fp32], nll [B,T] fp32 without gradient)."""
    nll = jax.lax.stop_gradient(token_nll(hidden, kernel, targets, chunk, logits_dtype))
    return jnp.sum(nll * weights), nll


def _cpu_lowp_head_grads(h: jax.Array, kernel: jax.Array, d_logits: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """d_h (h's dtype) and d_kernel (fp32) of one chunk with the operands in the kernel's low
    precision, in the forms XLA:CPU runs on bf16 kernels (marco_jax/model/matmul.py)."""
    b, c, e = h.shape
    h_low = h.reshape(b * c, e).astype(kernel.dtype)
    d_h, d_kernel = rounded_matmul_grads(h_low, kernel, d_logits.reshape(b * c, -1), h.dtype,
                                         jnp.float32)
    return d_h.reshape(b, c, e), d_kernel


def _fwd(hidden, kernel, targets, weights, chunk, logits_dtype):
    c = _chunk_len(hidden.shape[1], chunk)
    vocab = kernel.shape[1]

    def body(d_kernel, xs):
        h, t, w = xs
        logits = _chunk_logits(h, kernel, logits_dtype)
        peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        onehot = jnp.arange(vocab, dtype=t.dtype) == t[..., None]
        # d(sum w*nll)/dlogits = w * (softmax - onehot(target))
        if target_platform() == "cpu":  # one exp pass: exp is dear on CPU
            shifted = logits - peak
            e = jnp.exp(shifted)
            total = jnp.sum(e, axis=-1)
            nll = jnp.log(total) - jnp.take_along_axis(shifted, t[..., None], axis=-1)[..., 0]
            weighted_softmax = e * (w / total)[..., None]
        else:
            # Every pass reads the stored logits: the target logit by a masked sum (a gather
            # made XLA materialise an fp32 copy of the chunk to gather from; 7B: an
            # [8, 4096, 152064] fp32 write and its reads per micro-step) and the softmax
            # recomputed rather than kept.
            lse = jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1)) + peak[..., 0]
            nll = lse - jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
            weighted_softmax = jnp.exp(logits - lse[..., None]) * w[..., None]
        d_logits = weighted_softmax - onehot * w[..., None]
        if target_platform() == "cpu" and kernel.dtype != jnp.float32:
            d_h, d_kernel_chunk = _cpu_lowp_head_grads(h, kernel, d_logits)
        else:  # with matmul_dtype unset, kernel and h share a dtype and this is the plain form
            low = d_logits.astype(kernel.dtype)
            acc = None if kernel.dtype == h.dtype else jnp.float32
            d_h = jnp.einsum("bcv,ev->bce", low, kernel, preferred_element_type=acc)
            d_h = d_h.astype(h.dtype)
            d_kernel_chunk = jnp.einsum("bce,bcv->ev", h.astype(kernel.dtype), low,
                                        preferred_element_type=jnp.float32)
        d_kernel = d_kernel + d_kernel_chunk
        return d_kernel, (nll, d_h)

    w = weights.astype(jnp.float32)
    d_kernel, (nll, d_h) = jax.lax.scan(
        body, jnp.zeros(kernel.shape, jnp.float32),
        (_chunks(hidden, c), _chunks(targets, c), _chunks(w, c)))
    nll = _unchunk(nll)
    residuals = (_unchunk(d_h), d_kernel.astype(kernel.dtype), targets, weights)
    return (jnp.sum(nll * w), nll), residuals


def _bwd(chunk, logits_dtype, residuals, cotangents):
    d_h, d_kernel, targets, weights = residuals
    g, _ = cotangents  # the nll output is documented as gradient-free
    zeros_t = jnp.zeros(targets.shape, jax.dtypes.float0) if jnp.issubdtype(
        targets.dtype, jnp.integer) else jnp.zeros_like(targets)
    return ((g * d_h).astype(d_h.dtype), (g * d_kernel).astype(d_kernel.dtype), zeros_t,
            jnp.zeros_like(weights))


weighted_nll_sum.defvjp(_fwd, _bwd)


def per_source_sums(nll: jax.Array, mask: jax.Array, source_ids: jax.Array,
                    num_sources: int) -> tuple[jax.Array, jax.Array]:
    """Per-source (loss sum, token count), each [num_sources]; source id -1 counts nowhere."""
    onehot = (source_ids[..., None] == jnp.arange(num_sources)).astype(jnp.float32)
    w = mask.astype(jnp.float32)[..., None] * onehot
    return jnp.sum(nll[..., None] * w, axis=(0, 1)), jnp.sum(w, axis=(0, 1))
