"""The fused decode layer (marco_jax/model/decode_layer.py, cpu_kernels/decode_layer.cc) against
the unfused step it replaces: the same hidden states and KV caches, to float32 rounding, over
shapes that exercise each of its paths (partial column tiles, a head dim spanning two tiles, one
and several query heads per kv head, left-padded rows, float32 and bf16 weights). References:
the unfused step (XLA's fusions and our separately tested matmul and attention kernels) and
transformers' greedy `generate` (token for token, through the fused step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights, sharpen

from marco_jax.infer import generate
from marco_jax.model.config import Qwen2Config
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.native import kernels_available
from marco_jax.model.qwen2 import init_model

pytestmark = pytest.mark.skipif(not kernels_available(), reason="no C++ compiler for the kernels")

SHAPES = {
    # hidden, heads, kv heads, head dim, intermediate
    "partial-tiles": (80, 5, 1, 16, 100),  # hidden, q width and mlp not multiples of 32; G = 5
    "gqa": (64, 4, 2, 16, 160),
    "wide-heads": (128, 2, 2, 64, 256),  # a head spans two 32-column tiles; G = 1
}


def _model(shape: str, param_dtype: str, seed: int = 0):
    hidden, heads, kv, dim, inter = SHAPES[shape]
    cfg = Qwen2Config(vocab_size=300, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=dim, dtype="float32", param_dtype=param_dtype,
                      max_position_embeddings=256)
    model = init_model(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    layers = model.model.layers
    # Qwen2 initialises biases to zero and norm scales to one: make both matter.
    for linear in (layers.self_attn.q_proj, layers.self_attn.k_proj, layers.self_attn.v_proj):
        b = linear.bias.value
        linear.bias.value = jnp.asarray(rng.standard_normal(b.shape) * 0.3, b.dtype)
    for norm in (layers.input_layernorm, layers.post_attention_layernorm):
        s = norm.scale.value
        norm.scale.value = jnp.asarray(1 + 0.2 * rng.standard_normal(s.shape), s.dtype)
    return model


def _steps(model, tokens: np.ndarray, mask: np.ndarray, new: np.ndarray, fused: bool,
           monkeypatch) -> tuple:
    """Prefill, then two one-token steps through packed layers; (hidden of both steps, the
    caches after them, the lowered program's text)."""
    monkeypatch.setenv("MARCO_FUSED_DECODE_LAYER", "1" if fused else "0")
    layers = model.layer_arrays(pack=True)
    batch, width = tokens.shape

    def run(tokens, mask, new):  # a function of its own per call: jax caches traces per function
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        cache = KVCache.init(model.config, batch, width + new.shape[1] + 3)
        _, cache = model.hidden(tokens, positions, mask, cache, layers)
        outs = []
        for i in range(new.shape[1]):
            pos = (mask.sum(axis=1) + i)[:, None]
            h, cache = model.hidden(new[:, i:i + 1], pos, jnp.ones_like(pos), cache, layers)
            outs.append(h)
        return outs, cache.k, cache.v

    jitted = jax.jit(run)
    text = jitted.lower(tokens, mask, new).as_text()
    return (*jitted(tokens, mask, new), text)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fused_step_equals_the_unfused_one(shape, param_dtype, batch, monkeypatch):
    model = _model(shape, param_dtype)
    rng = np.random.default_rng(batch)
    width = 21
    tokens = rng.integers(0, 300, (batch, width)).astype(np.int32)
    lengths = rng.integers(1, width + 1, batch)
    lengths[0] = width
    mask = (np.arange(width)[None] >= width - lengths[:, None]).astype(np.int32)
    new = rng.integers(0, 300, (batch, 2)).astype(np.int32)
    got, got_k, got_v, fused_text = _steps(model, tokens, mask, new, True, monkeypatch)
    want, want_k, want_v, plain_text = _steps(model, tokens, mask, new, False, monkeypatch)
    assert fused_text.count("marco_decode_layer") == 4  # one call per layer and step
    assert "marco_decode_layer" not in plain_text
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    for g, w in zip([*got_k, *got_v], [*want_k, *want_v], strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_fused_step_is_not_a_no_op(monkeypatch):
    """The comparison above would pass if both sides skipped the layers: the hidden state must
    move with the layer's weights."""
    tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 300
    mask = np.ones_like(tokens)
    new = np.array([[5, 6], [7, 8]], np.int32)
    first, *_ = _steps(_model("gqa", "float32", seed=0), tokens, mask, new, True, monkeypatch)
    other, *_ = _steps(_model("gqa", "float32", seed=1), tokens, mask, new, True, monkeypatch)
    assert np.abs(np.asarray(first[0]) - np.asarray(other[0])).max() > 0.1


def test_no_fusion_where_a_condition_fails(monkeypatch):
    """Head dim 8 (not a multiple of 16) keeps the unfused step, which still decodes."""
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, dtype="float32",
                      param_dtype="float32", max_position_embeddings=64)
    model = init_model(cfg)
    tokens = np.ones((2, 5), np.int32)
    out, _, _, text = _steps(model, tokens, np.ones_like(tokens), np.ones((2, 1), np.int32),
                             True, monkeypatch)
    assert "marco_decode_layer" not in text
    assert np.isfinite(np.asarray(out[0])).all()


def test_greedy_decoding_through_the_fused_step_equals_transformers(tmp_path, monkeypatch):
    """Head dim 16, two layers, an intermediate size off the 32-column tiles, left-padded rows of
    three lengths: `generate` (packed layers, fused steps) against transformers."""
    monkeypatch.setenv("MARCO_FUSED_DECODE_LAYER", "1")
    _, hf = make_hf_model(tmp_path, hidden=64, heads=4, kv_heads=2, layers=2, vocab=160,
                          intermediate=136, tie=False, seed=5)
    sharpen(hf)
    model = load_hf_weights(hf)
    width, new = 11, 20
    rng = np.random.default_rng(0)
    lengths = np.array([11, 6, 3])
    tokens = rng.integers(2, 160, (3, width)).astype(np.int32)
    tokens[np.arange(width)[None] < width - lengths[:, None]] = 0
    got = np.asarray(generate(model, tokens, new, prompt_lengths=lengths, eos_ids=()).tokens)
    for row, n in enumerate(lengths):
        prompt = torch.tensor(tokens[row:row + 1, width - n:].astype(np.int64))
        with torch.no_grad():
            want = hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               top_k=None, top_p=None, pad_token_id=0, eos_token_id=None)
        np.testing.assert_array_equal(got[row], want[0, n:].numpy())
    assert len(set(got[0].tolist())) > 3  # the continuation depends on the context


@pytest.mark.parametrize("batch", [1, 3])
def test_generate_fuses_every_layer_and_updates_the_cache_in_place(batch, decode_programs,
                                                                   monkeypatch):
    """`generate`'s compiled loop calls the fused kernel once per layer and copies no K or V
    buffer (the kernel's cache operands are aliased to its outputs)."""
    import re

    monkeypatch.setenv("MARCO_FUSED_DECODE_LAYER", "1")
    model = _model("gqa", "float32", seed=2)
    prompt, new = 5, 7
    generate(model, np.tile(np.arange(3, 3 + prompt), (batch, 1)), new, eos_ids=())
    cfg = model.config
    hlo = decode_programs[0].as_text()
    assert hlo.count('custom_call_target="marco_decode_layer"') == cfg.num_hidden_layers
    buffer_elements = batch * cfg.num_key_value_heads * (prompt + new - 1) * cfg.dim_per_head
    copied = [int(np.prod([int(n) for n in dims.split(",") if n]))
              for dims in re.findall(r"= f32\[([0-9,]*)\]\{[0-9,]*\} copy\(", hlo)]
    assert buffer_elements not in copied, (buffer_elements, copied)


def _direct_operands(rng, batch: int, slots: int, valid: np.ndarray) -> tuple:
    """Random operands of `fused_decode_layer` (hidden 64, 4 heads of 16 over 2 kv heads, mlp
    96), `valid` [batch, slots]."""
    from marco_jax.model.packed_matmul import pack_kernel

    h, heads, kv, d, f = 64, 4, 2, 16, 96
    w = lambda *shape: jnp.asarray(rng.standard_normal(shape) * 0.2, jnp.float32)  # noqa: E731
    angle = rng.standard_normal((batch, 1, d))
    return (w(batch, 1, h), 1 + w(h), pack_kernel(w(h, heads, d)), pack_kernel(w(h, kv, d)),
            pack_kernel(w(h, kv, d)), w(heads, d), w(kv, d), w(kv, d),
            jnp.asarray(np.cos(angle), jnp.float32), jnp.asarray(np.sin(angle), jnp.float32),
            w(batch * kv, d, slots), w(batch * kv, slots, d), jnp.int32(slots - 1),
            jnp.asarray(valid), pack_kernel(w(heads, d, h), contract_dims=2), 1 + w(h),
            pack_kernel(w(h, f)), pack_kernel(w(h, f)), pack_kernel(w(f, h)), 1e-6)


def test_a_mask_of_other_rows_is_never_taken_for_this_one():
    """The kernel keeps each row's live slots from its last call when the mask bytes are the
    same: a mask with the same bytes but rows of another length must not be taken for it."""
    from marco_jax.model.decode_layer import fused_decode_layer

    rng = np.random.default_rng(0)
    pattern = rng.random(64) < 0.5
    pattern[[15, 31, 47, 63]] = True  # every row of both shapes has its newest slot valid
    wide = _direct_operands(rng, 2, 32, pattern.reshape(2, 32))
    narrow = _direct_operands(rng, 4, 16, pattern.reshape(4, 16))
    other = _direct_operands(rng, 4, 16, np.ones((4, 16), bool))
    fused_decode_layer(*wide)
    after_wide = np.asarray(fused_decode_layer(*narrow)[0])
    fused_decode_layer(*other)
    after_other = np.asarray(fused_decode_layer(*narrow)[0])
    np.testing.assert_array_equal(after_wide, after_other)
