"""Our Qwen2 against transformers' `Qwen2ForCausalLM` (PyTorch, fp32) on random tiny models.

Configs cover tied/untied embeddings, kv-head ratios 7, 2 and 1, and hidden sizes that are not
powers of two. Each HF model is built once per module; our jitted functions compile once per
config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights, sharpen

from marco_jax.infer import generate, left_pad
from marco_jax.model.config import Qwen2Config
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.qwen2 import init_model

TOL = 1e-4
CONFIGS = {
    # name: (hidden, heads, kv_heads, layers, tie, seed)
    "kv7_untied_h56": (56, 14, 2, 2, False, 3),
    "kv2_tied_h40": (40, 4, 2, 2, True, 1),
    "kv1_untied_h24": (24, 3, 3, 3, False, 2),
}
VOCAB = 160


@nnx.jit
def _logits(model, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids)


def hf_logits(hf_model, tokens, mask=None, positions=None) -> np.ndarray:
    kwargs = {}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(mask), dtype=torch.long)
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(positions), dtype=torch.long)
    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kwargs).logits.numpy()


def hf_left_pad_positions(mask: np.ndarray) -> np.ndarray:
    """What HF `generate` feeds: cumsum(mask) - 1, padding set to 1."""
    positions = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, positions)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    hidden, heads, kv_heads, layers, tie, seed = CONFIGS[request.param]
    _, hf_model = make_hf_model(tmp_path_factory.mktemp(request.param), hidden=hidden,
                                heads=heads, kv_heads=kv_heads, layers=layers, tie=tie,
                                vocab=VOCAB, seed=seed)
    hf_model = sharpen(hf_model)
    return hf_model, load_hf_weights(hf_model)


@pytest.fixture(scope="module")
def left_padded_prompts():
    rng = np.random.default_rng(11)
    prompts = [rng.integers(2, VOCAB, n).tolist() for n in (21, 9, 14)]
    return left_pad(prompts, pad_id=0)


def test_long_input_logits_match(pair):
    hf_model, model = pair
    tokens = np.random.default_rng(0).integers(0, VOCAB, (1, 520))
    ours = _logits(model, jnp.asarray(tokens), None, None)
    np.testing.assert_allclose(np.asarray(ours), hf_logits(hf_model, tokens), atol=TOL, rtol=0)


def test_left_padded_logits_match(pair, left_padded_prompts):
    hf_model, model = pair
    tokens, mask = left_padded_prompts
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = np.asarray(_logits(model, jnp.asarray(tokens), jnp.asarray(positions),
                              jnp.asarray(mask)))
    ref = hf_logits(hf_model, tokens, mask, hf_left_pad_positions(mask))
    real = mask.astype(bool)
    assert real.sum() == 21 + 9 + 14
    np.testing.assert_allclose(ours[real], ref[real], atol=TOL, rtol=0)


def test_greedy_and_eos_match_hf_generate(pair, left_padded_prompts):
    hf_model, model = pair
    tokens, mask = left_padded_prompts
    ours = generate(model, tokens, 32, prompt_mask=mask, eos_ids=(), pad_id=0)
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(tokens, dtype=torch.long),
                                attention_mask=torch.tensor(mask, dtype=torch.long),
                                max_new_tokens=32, do_sample=False, pad_token_id=0,
                                eos_token_id=None)[:, tokens.shape[1]:].numpy()
    out = np.asarray(ours.tokens)
    for row in out:  # a degenerate (constant) continuation would prove little
        assert len(set(row.tolist())) >= 4, row
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(np.asarray(ours.lengths), [32, 32, 32])
    assert not np.asarray(ours.finished).any()

    # Stop on a token the greedy path emits mid-way: rows that hit it pad after it, exactly as
    # HF `generate` does (which also stops once every row has finished).
    eos = int(out[0, 5])
    pad = VOCAB - 1 if eos != VOCAB - 1 else VOCAB - 2
    ours = generate(model, tokens, 32, prompt_mask=mask, eos_ids=eos, pad_id=pad)
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(tokens, dtype=torch.long),
                                attention_mask=torch.tensor(mask, dtype=torch.long),
                                max_new_tokens=32, do_sample=False, pad_token_id=pad,
                                eos_token_id=eos)[:, tokens.shape[1]:].numpy()
    out = np.asarray(ours.tokens)
    np.testing.assert_array_equal(out[:, :ref.shape[1]], ref)
    assert (out[:, ref.shape[1]:] == pad).all()
    for row, n, fin in zip(out, np.asarray(ours.lengths), np.asarray(ours.finished), strict=True):
        hits = np.nonzero(row == eos)[0]
        assert fin == (hits.size > 0)
        assert n == (hits[0] + 1 if hits.size else 32)
        assert (row[n:] == pad).all()
    assert np.asarray(ours.finished)[0] and np.asarray(ours.lengths)[0] <= 6


def test_packed_documents_match_separate_runs(pair):
    hf_model, model = pair
    rng = np.random.default_rng(5)
    doc_a, doc_b = rng.integers(0, VOCAB, 37), rng.integers(0, VOCAB, 26)
    pad = 7
    tokens = np.concatenate([doc_a, doc_b, np.zeros(pad, np.int64)])[None]
    segment_ids = np.array([[1] * 37 + [2] * 26 + [0] * pad])
    positions = np.array([list(range(37)) + list(range(26)) + [0] * pad])
    ours = np.asarray(_logits(model, jnp.asarray(tokens), jnp.asarray(positions),
                              jnp.asarray(segment_ids)))[0]
    np.testing.assert_allclose(ours[:37], hf_logits(hf_model, doc_a[None])[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours[37:63], hf_logits(hf_model, doc_b[None])[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("lengths", [(21, 9, 14), (256, 130, 1)], ids=["short", "long"])
def test_kv_cache_decoding_matches_full_forward(pair, lengths):
    """Prefill a left-padded prompt into an empty cache with room for more (`KVCache.fresh`: the
    prefill attends over the prompt's own keys; at 256 tokens over CPU causal query blocks),
    then feed the rest one token at a time: each step's logits equal the full forward's logits
    at that position."""
    _, model = pair
    rng = np.random.default_rng(11)
    tokens, mask = left_pad([rng.integers(2, VOCAB, n).tolist() for n in lengths], pad_id=0)
    extra = np.random.default_rng(9).integers(0, VOCAB, (tokens.shape[0], 12))
    full = np.concatenate([tokens, extra], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(extra)], axis=1)
    positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)
    want = np.asarray(_logits(model, jnp.asarray(full), jnp.asarray(positions),
                              jnp.asarray(full_mask)))

    step = nnx.jit(lambda m, t, p, s, c: m.decode_step(t, p, s, c))
    cache = KVCache.init(model.config, full.shape[0], full.shape[1])
    assert cache.fresh
    p = tokens.shape[1]
    logits, cache = step(model, jnp.asarray(tokens), jnp.asarray(positions[:, :p]),
                         jnp.asarray(mask), cache)
    assert not cache.fresh
    got = [np.asarray(logits)]
    for i in range(p, full.shape[1]):
        logits, cache = step(model, jnp.asarray(full[:, i:i + 1]),
                             jnp.asarray(positions[:, i:i + 1]), jnp.ones((3, 1), jnp.int32),
                             cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    assert int(cache.end) == full.shape[1]
    real = full_mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=TOL, rtol=0)


RUNTIME_CONFIG = Qwen2Config(vocab_size=VOCAB, hidden_size=40, intermediate_size=88,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=False, rope_theta=10_000.0)


def _loss_logits_grads(config: Qwen2Config, params: nnx.State):
    """Loss, logits and parameter gradients on a packed + padded batch (remat only shows under
    differentiation, so gradients are compared too)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: init_model(config)))
    model = nnx.merge(graphdef, params)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (2, 24)))
    segment_ids = jnp.asarray([[1] * 24, [1] * 10 + [2] * 10 + [0] * 4])
    positions = jnp.asarray([list(range(24)), list(range(10)) + list(range(10)) + [0] * 4])

    def loss(m):
        logits = m(tokens, positions, segment_ids)
        return jnp.mean(jnp.where(segment_ids[..., None] > 0, logits, 0.0) ** 2), logits

    (value, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    real = np.asarray(segment_ids) > 0
    return float(value), np.asarray(logits)[real], nnx.to_pure_dict(grads)


@pytest.fixture(scope="module")
def runtime_params():
    return nnx.state(init_model(RUNTIME_CONFIG, seed=4))


@pytest.fixture(scope="module")
def runtime_baseline(runtime_params):
    return _loss_logits_grads(RUNTIME_CONFIG, runtime_params)  # scanned, no remat, xla attention


@pytest.mark.parametrize("runtime", [
    {"scan_layers": False},
    {"remat_policy": "full"},
    {"remat_policy": "dots"},
    {"remat_policy": "dots_with_no_batch_dims"},
    {"remat_policy": "save_qkv_proj", "scan_layers": False},
    {"attention_impl": "dot_product_attention"},
], ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()))
def test_runtime_options_do_not_change_results(runtime_params, runtime_baseline, runtime):
    base_value, base_logits, base_grads = runtime_baseline
    value, logits, grads = _loss_logits_grads(RUNTIME_CONFIG.replace(**runtime), runtime_params)
    np.testing.assert_allclose(logits, base_logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(value, base_value, rtol=1e-5)
    flat_base = {jax.tree_util.keystr(k): v for k, v in
                 jax.tree_util.tree_leaves_with_path(base_grads)}
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(grads)}
    assert flat.keys() == flat_base.keys()
    for key, g in flat.items():
        np.testing.assert_allclose(g, flat_base[key], atol=1e-6, rtol=1e-4, err_msg=key)
