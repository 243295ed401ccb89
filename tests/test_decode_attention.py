"""A decode step's attention over the CPU KV cache in the C++ kernel
(`marco_jax/model/cpu_kernels/decode_attention.cc`): outputs against a float64 numpy softmax
attention and against XLA's path (MARCO_CPU_KERNELS=0) on padded, partly written, odd-length
caches, GQA groups above the kernel's register block, head dims it handles in pieces, a row with
no live slot; the kernel that writes the step's key and value into the cache first; where
decoding runs each."""

from __future__ import annotations

import dataclasses

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


@pytest.mark.parametrize("slot", [0, 37, 69, 500], ids=lambda s: f"slot{s}")
def test_decode_attention_writing_equals_cache_update_then_xla(slot, monkeypatch):
    """The kernel that writes the step's key and value into the cache itself: the updated cache
    and the output equal XLA's dynamic_update_slice (its clamping of a slot past the end
    included) followed by XLA's attention path."""
    b, kv, g, d, s = 3, 2, 3, 32, 70
    rng = np.random.default_rng(slot)
    q = jnp.asarray(rng.standard_normal((b, 1, kv * g, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
            for shape in ((b * kv, d, s), (b * kv, s, d)))
    k_new = jnp.asarray(rng.standard_normal((b * kv, d, 1)), jnp.float32)
    v_new = jnp.asarray(rng.standard_normal((b * kv, 1, d)), jnp.float32)
    valid = jnp.asarray(rng.random((b, s)) < 0.7).at[:, min(slot, s - 1)].set(True)
    assert attention.uses_decode_attention_kernel(q, k, v)
    out, k_out, v_out = jax.jit(attention.decode_attention_writing)(
        q, k, v, k_new, v_new, jnp.int32(slot), valid)

    def reference(q, k, v):
        k = jax.lax.dynamic_update_slice_in_dim(k, k_new, slot, axis=2)
        v = jax.lax.dynamic_update_slice_in_dim(v, v_new, slot, axis=1)
        qg = q.reshape(b, 1, kv, g, d)
        return attention._heads_major_attention(qg, k, v, valid[:, None]), k, v

    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    want_out, want_k, want_v = jax.jit(reference)(q, k, v)
    np.testing.assert_array_equal(np.asarray(k_out), np.asarray(want_k))
    np.testing.assert_array_equal(np.asarray(v_out), np.asarray(want_v))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), atol=2e-6, rtol=2e-6)


def _lowered_step(dtype: str, tokens: int, fresh: bool = True) -> str:
    config = Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=10_000.0, dtype=dtype)
    graphdef, state = nnx.split(init_model(config))

    def step(state, tokens, cache):
        model = nnx.merge(graphdef, state)
        positions = jnp.zeros(tokens.shape, jnp.int32)
        return model.decode_step(tokens, positions, jnp.ones_like(tokens), cache)[0]

    cache = dataclasses.replace(KVCache.init(config, 2, 32), fresh=fresh)
    assert cache.per_layer
    return jax.jit(step).lower(state, jnp.zeros((2, tokens), jnp.int32), cache).as_text()


def test_decoding_runs_the_kernel_once_per_layer_and_prefill_does_not():
    """Decode steps (one token) of a float32 model call the kernel in each of its 3 layers (the
    one that writes the step's keys and values, over a filled cache; over a fresh one, the step's
    own keys only, the one that does not); a prefill (8 tokens) and bf16 compute keep XLA's
    path."""
    step = _lowered_step("float32", 1, fresh=False)
    assert step.count("custom_call @marco_decode_attention_write(") == 3
    assert "custom_call @marco_decode_attention(" not in step
    assert _lowered_step("float32", 1).count("custom_call @marco_decode_attention(") == 3
    assert "marco_decode_attention" not in _lowered_step("float32", 8)
    assert "marco_decode_attention" not in _lowered_step("bfloat16", 1)
