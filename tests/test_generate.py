"""Sampling (hand-computed supports, transformers' logits warpers as a reference) and the
`generate` API: rng determinism, prompt lengths vs masks, vocab limit, input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from marco_jax.infer import SamplingParams, filter_logits, generate, sample_tokens
from marco_jax.model.config import Qwen2Config
from marco_jax.model.qwen2 import init_model

PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]


def _probs(params: SamplingParams) -> np.ndarray:
    return np.asarray(jax.nn.softmax(filter_logits(LOGITS, params), axis=-1))[0]


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(temperature=1.0), PROBS),
    (SamplingParams(temperature=1.0, top_k=2), [5 / 7, 2 / 7, 0, 0, 0]),
    # Mass ranked above each token: 0, .5, .7, .85, .95 -> the first three stay under .75.
    (SamplingParams(temperature=1.0, top_p=0.75), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),
    (SamplingParams(temperature=1.0, top_p=0.45), [1, 0, 0, 0, 0]),
    # Top-k first (renormalised .526,.211,.158,.105), then top-p .6 keeps two.
    (SamplingParams(temperature=1.0, top_k=4, top_p=0.6), [5 / 7, 2 / 7, 0, 0, 0]),
    (SamplingParams(temperature=2.0), np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
], ids=["plain", "top_k2", "top_p.75", "top_p.45", "top_k4_top_p.6", "temp2"])
def test_filtered_distribution_is_hand_computed(params, expected):
    np.testing.assert_allclose(_probs(params), expected, atol=1e-6)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (0.7, 0, 0.9), (1.3, 5, 1.0), (1.0, 10, 0.8), (0.5, 0, 0.3), (1.0, 3, 0.99)])
def test_filter_matches_transformers_warpers(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    ours = np.asarray(filter_logits(jnp.asarray(logits),
                                    SamplingParams(temperature, top_p=top_p, top_k=top_k)))
    ref = torch.tensor(logits)
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    for warper in warpers:  # HF's order: temperature, top-k, top-p
        ref = warper(None, ref)
    ref = ref.numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    kept = ~np.isinf(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6)


def test_samples_stay_in_support_with_the_right_frequencies():
    params = SamplingParams(temperature=1.0, top_p=0.75)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sample_tokens(LOGITS, k, params))(keys))[:, 0]
    counts = np.bincount(draws, minlength=5) / len(draws)
    assert counts[3] == counts[4] == 0
    np.testing.assert_allclose(counts[:3], np.array([0.5, 0.2, 0.15]) / 0.85, atol=0.04)


def test_greedy_ignores_rng_and_filters():
    rng = jax.random.key(3)
    assert int(sample_tokens(LOGITS, rng, SamplingParams())[0]) == 0


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5},
                                    {"top_k": -2}])
def test_bad_sampling_params_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("vocab", [1000, 1024, 151936])  # one-level; 8 and 1187 groups of 128
def test_greedy_tokens_equal_numpy_argmax_on_ties_nans_and_infs(vocab):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, vocab)).astype(np.float32)
    logits[1, [3, 500, 999]] = 9.0  # a three-way tie at the top (across groups): first index wins
    logits[2, [10, 20]] = np.nan  # NaN beats everything, the first NaN wins
    logits[3, :] = -np.inf  # nothing finite: index 0
    logits[4, 700] = np.inf
    logits[5, :] = 1.5  # all equal
    logits[6, vocab - 1] = 50.0  # the last index
    logits[7, [5, 900]] = [np.inf, np.nan]  # a later NaN beats an earlier +inf
    logits[8, [130, 131]] = 7.0  # a tie inside one group that is not the first
    logits[9, [0, 999]] = [np.nan, 60.0]  # NaN at index 0
    # Batches whose logits sum to NaN take the exact one-level search; the others (no NaN, not
    # both infinities) the two-level one.
    for rows in (slice(None), [0, 1, 3, 5, 6, 8], [0, 4, 8]):
        greedy = sample_tokens(jnp.asarray(logits[rows]), jax.random.key(0), SamplingParams())
        assert greedy.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(greedy), np.argmax(logits[rows], axis=-1))


@pytest.fixture(scope="module")
def tiny_model():
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0)
    return init_model(config, seed=0)


def test_sampled_generation_is_deterministic_per_rng(tiny_model):
    prompts = np.array([[5, 6, 7, 8], [0, 9, 10, 11]])
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]])
    run = lambda seed, **kw: np.asarray(generate(  # noqa: E731
        tiny_model, prompts, 24, prompt_mask=mask, temperature=1.5, eos_ids=(), rng=seed,
        **kw).tokens)
    first = run(7)
    np.testing.assert_array_equal(first, run(7))
    assert not np.array_equal(first, run(8))
    # Top-k 1 leaves one candidate: sampling must reduce to greedy decoding.
    greedy = np.asarray(generate(tiny_model, prompts, 24, prompt_mask=mask, eos_ids=()).tokens)
    np.testing.assert_array_equal(run(7, top_k=1), greedy)
    assert len(set(first.ravel().tolist())) > 5  # temperature 1.5 on a random model: spread


def test_generate_rejects_bad_prompts(tiny_model):
    tokens = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="not left-padded"):
        generate(tiny_model, tokens, 4, prompt_mask=np.array([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_model, tokens, 4, prompt_lengths=np.array([0, 3]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, tokens, 0)


def test_lengths_mask_and_single_step_agree_with_forward(tiny_model):
    prompts = np.array([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    by_mask = generate(tiny_model, prompts, 6, prompt_mask=mask, eos_ids=())
    by_lengths = generate(tiny_model, prompts, 6, prompt_lengths=np.array([2, 4]), eos_ids=())
    np.testing.assert_array_equal(np.asarray(by_mask.tokens), np.asarray(by_lengths.tokens))
    one = np.asarray(generate(tiny_model, prompts, 1, prompt_mask=mask, eos_ids=()).tokens)
    logits = np.asarray(tiny_model(jnp.asarray(prompts[1:])))
    assert one.shape == (2, 1) and one[1, 0] == logits[0, -1].argmax()
    np.testing.assert_array_equal(one[:, 0], np.asarray(by_mask.tokens)[:, 0])
    # Row 0 alone (no padding) decodes the same tokens as inside the padded batch.
    alone = generate(tiny_model, prompts[:1, 2:], 6, eos_ids=())
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(by_mask.tokens)[0])


def test_vocab_limit_is_respected(tiny_model):
    prompts = np.array([[5, 6, 7, 8]])
    free = np.asarray(generate(tiny_model, prompts, 16, eos_ids=(), temperature=2.0).tokens)
    assert free.max() >= 10  # otherwise the limit below would prove nothing
    limited = generate(tiny_model, prompts, 16, eos_ids=(), temperature=2.0, vocab_limit=10)
    assert np.asarray(limited.tokens).max() < 10


def test_changing_stop_ids_or_pad_does_not_recompile(tiny_model):
    from marco_jax.infer.generate import _decode_jit

    prompts = np.array([[5, 6, 7, 8, 9]])
    generate(tiny_model, prompts, 5, eos_ids=(3,), pad_id=0)
    compiled = _decode_jit._cache_size()
    generate(tiny_model, prompts, 5, eos_ids=(4, 11), pad_id=2)
    generate(tiny_model, prompts, 5, eos_ids=(), pad_id=1)
    assert _decode_jit._cache_size() == compiled
    generate(tiny_model, prompts, 6, eos_ids=(3,), pad_id=0)  # a new length is a new program
    assert _decode_jit._cache_size() == compiled + 1


@pytest.mark.parametrize("tied, param_dtype", [(True, "float32"), (False, "float32"),
                                               (False, "bfloat16")],
                         ids=["tied", "untied", "untied-bf16-params"])
def test_decode_head_and_layers_are_built_once_per_params_and_follow_updates(
        tiny_model, tied, param_dtype, monkeypatch):
    """The decode head (a tied head's transpose) and, on CPU, the per-layer copy of the decoder
    params are built once and kept between calls on the same params (an untied head in the
    compute dtype is read as stored), and a params update (what training does) is decoded with
    the new params, as a fresh model would."""
    import sys

    from flax import nnx

    gen = sys.modules["marco_jax.infer.generate"]  # the package re-exports a function of that name
    # A wide init, so two seeds decode different tokens.
    model = init_model(tiny_model.config.replace(tie_word_embeddings=tied, initializer_range=0.5,
                                                 param_dtype=param_dtype), seed=0)
    builds, layer_builds = [], []
    build, build_layers = gen._decode_head_jit, gen._decode_layers_jit
    monkeypatch.setattr(gen, "_decode_head_jit", lambda *a: builds.append(1) or build(*a))
    monkeypatch.setattr(gen, "_decode_layers_jit",
                        lambda *a: layer_builds.append(1) or build_layers(*a))
    prompts = np.array([[5, 6, 7, 8, 9], [0, 0, 4, 3, 2]])
    lengths = np.array([5, 3])
    first = np.asarray(generate(model, prompts, 6, prompt_lengths=lengths, eos_ids=()).tokens)
    again = np.asarray(generate(model, prompts, 6, prompt_lengths=lengths, eos_ids=()).tokens)
    # An untied head stored in the compute dtype (fp32) is read as stored, unless it is packed
    # for the CPU matmul kernel.
    builds_per_model = 1 if tied or param_dtype != "float32" or gen.packs_head(model) else 0
    assert len(builds) == builds_per_model
    assert len(layer_builds) == 1
    np.testing.assert_array_equal(first, again)

    other = init_model(model.config, seed=7)
    nnx.update(model, nnx.state(other))
    updated = np.asarray(generate(model, prompts, 6, prompt_lengths=lengths, eos_ids=()).tokens)
    fresh = np.asarray(generate(other, prompts, 6, prompt_lengths=lengths, eos_ids=()).tokens)
    assert len(builds) == 3 * builds_per_model  # the updated model, then `other`
    assert len(layer_builds) == 3
    np.testing.assert_array_equal(updated, fresh)
    assert not np.array_equal(updated, first)


def test_layer_copy_follows_the_memory_budget_and_decodes_the_same_tokens(tiny_model,
                                                                          monkeypatch):
    """`keeps_layer_copy` keeps the per-layer copy exactly while it fits the RAM fraction; a model
    over the budget slices the stacked params inside each call and samples the same tokens."""
    import os
    import sys

    from flax import nnx

    gen = sys.modules["marco_jax.infer.generate"]
    layer_bytes = sum(a.nbytes for a in jax.tree.leaves(nnx.state(tiny_model.model.layers)))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(gen, "LAYER_COPY_MAX_RAM_FRACTION", (layer_bytes + 0.5) / ram)
    assert gen.keeps_layer_copy(tiny_model)
    prompts = np.array([[5, 6, 7, 8, 9], [0, 0, 4, 3, 2]])
    kwargs = dict(prompt_lengths=np.array([5, 3]), eos_ids=(), temperature=1.0, rng=3)
    kept = generate(tiny_model, prompts, 7, **kwargs)
    graphdef, state = nnx.split(tiny_model)
    assert gen._layers_for(tiny_model, graphdef, state) is not None

    monkeypatch.setattr(gen, "LAYER_COPY_MAX_RAM_FRACTION", (layer_bytes - 0.5) / ram)
    assert not gen.keeps_layer_copy(tiny_model)
    assert gen._layers_for(tiny_model, graphdef, state) is None
    sliced = generate(tiny_model, prompts, 7, **kwargs)
    np.testing.assert_array_equal(np.asarray(kept.tokens), np.asarray(sliced.tokens))
    np.testing.assert_array_equal(np.asarray(kept.lengths), np.asarray(sliced.lengths))


def test_decoding_reads_the_kept_layer_copy(tiny_model, monkeypatch):
    """The kept per-layer copy is what decoding reads: with a copy built from another model's
    layer params, a model decodes exactly as one holding those layer params in its stacked
    arrays decodes by slicing them (3 layers, so a mixed-up layer order shows)."""
    import sys

    from flax import nnx

    gen = sys.modules["marco_jax.infer.generate"]
    config = tiny_model.config.replace(num_hidden_layers=3, initializer_range=0.5)
    model, other, hybrid = (init_model(config, seed) for seed in (0, 7, 0))
    nnx.update(hybrid.model.layers, nnx.state(other.model.layers))
    prompts = np.array([[5, 6, 7, 8, 9], [0, 0, 4, 3, 2]])
    kwargs = dict(prompt_lengths=np.array([5, 3]), eos_ids=())
    own = np.asarray(generate(model, prompts, 8, **kwargs).tokens)
    monkeypatch.setattr(gen, "LAYER_COPY_MAX_RAM_FRACTION", 0.0)
    expected = np.asarray(generate(hybrid, prompts, 8, **kwargs).tokens)
    assert not np.array_equal(expected, own)

    monkeypatch.setattr(gen, "LAYER_COPY_MAX_RAM_FRACTION", 1 / 8)
    other_graphdef, other_state = nnx.split(other)
    build = gen._decode_layers_jit
    monkeypatch.setattr(gen, "_decode_layers_jit", lambda *a: build(other_graphdef, other_state))
    fresh = init_model(config, seed=0)  # a model with no kept copy yet
    np.testing.assert_array_equal(np.asarray(generate(fresh, prompts, 8, **kwargs).tokens),
                                  expected)


def test_host_memory_is_the_lower_of_ram_and_the_container_limit(tmp_path):
    import os
    import sys

    gen = sys.modules["marco_jax.infer.generate"]
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert gen.host_memory_bytes((v2, v1)) == ram  # neither file: physical memory
    v2.write_text("max\n")
    assert gen.host_memory_bytes((v2, v1)) == ram
    v1.write_text(f"{ram // 4}\n")
    assert gen.host_memory_bytes((v2, v1)) == ram // 4
    v1.write_text(f"{ram * 4}\n")  # a limit above RAM: RAM
    assert gen.host_memory_bytes((v2, v1)) == ram


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_steps_write_the_kv_cache_in_place(tiny_model, batch, decode_programs):
    """No step copies a layer's K or V buffer. The cache was [B, K, S, D]: at batch 1 XLA:CPU
    dropped the size-1 axis for the attention's view, duplicated the cache write feeding it and
    copied every buffer four times a step; it is [B*K, S, D] (`KVCache`) and is updated in
    place. The compiled program says which (no copy with a buffer's element count)."""
    import re

    prompt, new = 5, 7
    generate(tiny_model, np.tile(np.arange(3, 3 + prompt), (batch, 1)), new, eos_ids=())
    cfg = tiny_model.config
    buffer_elements = batch * cfg.num_key_value_heads * (prompt + new - 1) * cfg.dim_per_head
    hlo = decode_programs[0].as_text()
    copied = [int(np.prod([int(n) for n in dims.split(",") if n]))
              for dims in re.findall(r"= f32\[([0-9,]*)\]\{[0-9,]*\} copy\(", hlo)]
    assert buffer_elements not in copied, (buffer_elements, copied)


@pytest.mark.parametrize("batch", [1, 3])
def test_prefill_attention_transposes_no_scores(tiny_model, batch, decode_programs):
    """The prefill into the empty cache attends with the decode steps' two plain matmuls over
    the keys and values as the cache lays them out. The einsum form it replaced had XLA:CPU
    transpose score-sized tensors and every layer's output (bench/RESULTS.md: a layer-heavy
    batch-8 bf16 prefill 98 -> 87 ms). The compiled program shows it: no copy or transpose of
    an array with the element count of one layer's scores [B, H, T, T]."""
    import re

    prompt = 5
    generate(tiny_model, np.tile(np.arange(3, 3 + prompt), (batch, 1)), 7, eos_ids=())
    cfg = tiny_model.config
    scores = batch * cfg.num_attention_heads * prompt * prompt
    moved = [int(np.prod([int(n) for n in dims.split(",") if n]))
             for dims in re.findall(r"= f32\[([0-9,]*)\]\{[0-9,]*\} (?:copy|transpose)\(",
                                    decode_programs[0].as_text())]
    assert moved and scores not in moved, (scores, moved)


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_step_matmuls_contract_row_major_right_operands(tiny_model, batch,
                                                               decode_programs):
    """Every matmul of a decode step, the attention's over the KV cache included, contracts
    the right operand's dimension right after its batch dimensions ([.., K, N], no transposed
    read): the CPU cache keeps K keys-minor ([B*K, D, S], `KVCache`). With K as [B*K, S, D]
    the scores were q @ k^T, which XLA:CPU ran 1.4-1.8x slower (bench/RESULTS.md)."""
    import re

    generate(tiny_model, np.tile(np.arange(3, 8), (batch, 1)), 6, eos_ids=())
    dots = [line for line in decode_programs[0].as_text().splitlines()
            if " dot(" in line and "while/body" in line]
    # the attention's two (batched); at one row XLA turns the weight matmuls into reductions
    assert sum("rhs_batch_dims" in line for line in dots) == 2, dots
    for line in dots:
        batch_dims = re.search(r"rhs_batch_dims=\{([0-9,]*)\}", line)
        contracting = re.search(r"rhs_contracting_dims=\{([0-9,]*)\}", line).group(1)
        after_batch = len(batch_dims.group(1).split(",")) if batch_dims else 0
        assert contracting == str(after_batch), line
