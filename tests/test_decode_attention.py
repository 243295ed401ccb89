"""A decode step's attention over the CPU KV cache in the C++ kernel
(`marco_jax/model/cpu_kernels/decode_attention.cc`): outputs against a float64 numpy softmax
attention and against XLA's path (MARCO_CPU_KERNELS=0) on padded, partly written, odd-length
caches, GQA groups above the kernel's register block, head dims it handles in pieces, a row with
no live slot; where decoding runs it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from marco_jax.model import attention
from marco_jax.model.config import Qwen2Config
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.native import kernels_available
from marco_jax.model.qwen2 import init_model


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert kernels_available(), "the CPU kernels did not build (see the warning above)"


def _numpy_attention(q, k, v, valid):
    """q [B, 1, K, G, D], k [B*K, D, S], v [B*K, S, D], valid [B, 1, S] -> [B, 1, K*G, D]:
    float64 softmax over the valid slots (all slots, uniformly, where none is valid)."""
    b, _, kv, g, d = q.shape
    rows = q[:, 0].reshape(b * kv, g, d).astype(np.float64)
    scores = np.einsum("igd,ids->igs", rows, k.astype(np.float64)) * d ** -0.5
    live = np.repeat(valid[:, 0], kv, axis=0)[:, None]  # [B*K, 1, S]
    scores = np.where(live, scores, -np.inf)
    scores = np.where(live.any(axis=-1, keepdims=True), scores, 0.0)  # none live: uniform
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("igs,isd->igd", p, v.astype(np.float64))
    return out.reshape(b, kv * g, d)[:, None]


_step = jax.jit(attention._heads_major_attention)


# (rows, kv heads, group, head dim, slots): batch 8 over 256 slots; Qwen2-0.5B's group of 7;
# a group of 9 (two register blocks); head dims 128, 48 (three 16-lane pieces) and 16; slot
# counts that are no multiple of the 16-slot vector (255, 70, 17: a last partial vector, read from
# a copy) and long ones (1,151); one slot. Row 0's hole leaves a whole vector of keys unread.
CASES = [(8, 2, 3, 64, 256), (1, 2, 7, 64, 255), (2, 1, 9, 48, 70), (3, 2, 4, 128, 300),
         (2, 2, 2, 16, 1), (2, 1, 5, 32, 17), (2, 2, 3, 64, 1151)]


@pytest.mark.parametrize("b, kv, g, d, s", CASES, ids=str)
def test_decode_attention_equals_float64_softmax_and_xla(b, kv, g, d, s, monkeypatch):
    rng = np.random.default_rng(s)
    q = rng.standard_normal((b, 1, kv, g, d)).astype(np.float32) * 2
    k = rng.standard_normal((b * kv, d, s)).astype(np.float32)
    v = rng.standard_normal((b * kv, s, d)).astype(np.float32)
    # left padding, slots not written yet, a hole; the last row has no live slot when b > 1
    valid = np.zeros((b, 1, s), bool)
    for r in range(b):
        valid[r, 0, min(r * 5, s - 1): max(1, s - 3 * r)] = True
    valid[0, 0, s // 2: s // 2 + 20] = False
    valid[0, 0, 0] = True
    if b > 1:
        valid[-1] = False
    args = [jnp.asarray(a) for a in (q, k, v, valid)]
    assert attention.uses_decode_attention_kernel(jnp.zeros((1, g, d)), args[1], args[2])
    ours = np.asarray(_step(*args))
    np.testing.assert_allclose(ours, _numpy_attention(q, k, v, valid), atol=2e-6, rtol=2e-6)
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    xla = np.asarray(jax.jit(lambda *a: attention._heads_major_attention(*a))(*args))
    np.testing.assert_allclose(ours, xla, atol=2e-6, rtol=2e-6)


def _lowered_step(dtype: str, tokens: int) -> str:
    config = Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=10_000.0, dtype=dtype)
    graphdef, state = nnx.split(init_model(config))

    def step(state, tokens, cache):
        model = nnx.merge(graphdef, state)
        positions = jnp.zeros(tokens.shape, jnp.int32)
        return model.decode_step(tokens, positions, jnp.ones_like(tokens), cache)[0]

    cache = KVCache.init(config, 2, 32)
    assert cache.per_layer
    return jax.jit(step).lower(state, jnp.zeros((2, tokens), jnp.int32), cache).as_text()


def test_decoding_runs_the_kernel_once_per_layer_and_prefill_does_not():
    """Decode steps (one token) of a float32 model call the kernel in each of its 3 layers; a
    prefill (8 tokens) and bf16 compute keep XLA's path."""
    assert _lowered_step("float32", 1).count("custom_call @marco_decode_attention(") == 3
    assert "marco_decode_attention" not in _lowered_step("float32", 8)
    assert "marco_decode_attention" not in _lowered_step("bfloat16", 1)
