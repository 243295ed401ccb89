"""A decoder layer's decode step (one token per row) as one CPU kernel call.

`cpu_kernels/decode_layer.cc` runs what `qwen2.DecoderLayer` does for one token over the CPU KV
cache (RMSNorm, q/k/v with biases, RoPE, the cache write and attention, o and the residual,
RMSNorm, gate/up, silu(gate) * up, down and the residual) with the packed weights
(`packed_matmul.PackedKernel`) and the attention items of `decode_attention.cc`, handing work to
the thread pool once per layer instead of once per matmul, and without XLA's ~20 small fusions a
layer between the kernels. `bench/bench_decode_layer.py` times both steps in one process (2-core
CPU, 2026-12-08: tiny-20m batch 8 0.90x the unfused run's time, -152 us a step; every shape and
batch of that bench faster, 0.87-0.98x).

Where it runs: decoding steps on CPU with float32 compute, packed layer weights (float32 or bf16
tiles: `layer_arrays(pack=True)`, which `generate` and the eval engine build), a float32
heads-major cache and a head dim that is a multiple of 16: the conditions of the packed matmul and
of the decode attention kernel together. The values are those of the unfused step up to the order
of float32 sums (the norms' sums of squares, attention's) and ~1 ulp in exp (silu, softmax):
`tests/test_decode_layer.py`. `MARCO_FUSED_DECODE_LAYER=0` keeps the unfused step (A/B runs).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.attention import MASK_VALUE
from marco_jax.model.native import kernels_available
from marco_jax.model.packed_matmul import PackedKernel

_TARGETS = {jnp.dtype(jnp.float32): "marco_decode_layer",
            jnp.dtype(jnp.bfloat16): "marco_decode_layer_bf16"}
_OFF = ("0", "false", "no", "off")


def fused_decode_layer_enabled() -> bool:
    """False when MARCO_FUSED_DECODE_LAYER is 0/false/no/off (read when a step is traced)."""
    return os.environ.get("MARCO_FUSED_DECODE_LAYER", "1").strip().lower() not in _OFF


def uses_fused_decode_layer(x: jax.Array, kernels: list, biases: list, k_cache: jax.Array,
                            v_cache: jax.Array) -> bool:
    """Whether a step of x [B, T, H] over this heads-major cache runs fused: T = 1, float32
    activations and cache, every Linear kernel packed in one dtype, biases on exactly q, k and v
    (Qwen2's), head dim a multiple of 16, the kernels built and the fusion enabled."""
    if not (x.ndim == 3 and x.shape[1] == 1 and x.dtype == jnp.float32):
        return False
    if not all(isinstance(k, PackedKernel) for k in kernels):
        return False
    dtypes = {jnp.dtype(k.tiles.dtype) for k in kernels}
    return (len(dtypes) == 1 and dtypes.pop() in _TARGETS
            and [b is not None for b in biases] == [True, True, True, False, False, False, False]
            and k_cache.dtype == jnp.float32 and v_cache.dtype == jnp.float32
            and k_cache.shape[1] % 16 == 0 and k_cache.shape[1] == v_cache.shape[2]
            and fused_decode_layer_enabled() and kernels_available())


def fused_decode_layer(x: jax.Array, norm1: jax.Array, q: PackedKernel, k: PackedKernel,
                       v: PackedKernel, q_bias: jax.Array, k_bias: jax.Array,
                       v_bias: jax.Array, cos: jax.Array, sin: jax.Array, k_cache: jax.Array,
                       v_cache: jax.Array, slot: jax.Array, valid: jax.Array, o: PackedKernel,
                       norm2: jax.Array, gate: PackedKernel, up: PackedKernel,
                       down: PackedKernel, eps: float
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, 1, H] -> (the layer's output [B, 1, H], k_cache, v_cache) with this step's key and
    value written at `slot` (clamped into the cache, as `dynamic_update_slice` clamps): k_cache
    [B*K, D, S] and v_cache [B*K, S, D] updated in place (donate them, as a decode loop's carry
    is); cos and sin [B, 1, D] (`rope_cos_sin`); valid [B, S] the slots this step attends to
    (its own included). Only where `uses_fused_decode_layer`."""
    b, _, h = x.shape
    d = cos.shape[-1]
    f32 = jnp.float32
    out, k_cache, v_cache = jax.ffi.ffi_call(
        _TARGETS[jnp.dtype(q.tiles.dtype)],
        (jax.ShapeDtypeStruct((b, h), f32), jax.ShapeDtypeStruct(k_cache.shape, f32),
         jax.ShapeDtypeStruct(v_cache.shape, f32)),
        input_output_aliases={10: 1, 11: 2})(
        x.reshape(b, h), norm1.astype(f32), q.tiles, k.tiles, v.tiles,
        q_bias.reshape(-1).astype(f32), k_bias.reshape(-1).astype(f32),
        v_bias.reshape(-1).astype(f32), cos.reshape(b, d).astype(f32),
        sin.reshape(b, d).astype(f32), k_cache, v_cache, jnp.asarray(slot, jnp.int32),
        valid.astype(jnp.bool_), o.tiles, norm2.astype(f32), gate.tiles, up.tiles, down.tiles,
        eps=np.float32(eps), scale=np.float32(d ** -0.5), mask_value=np.float32(MASK_VALUE))
    return out.reshape(b, 1, h), k_cache, v_cache
