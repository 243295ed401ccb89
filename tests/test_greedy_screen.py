"""Greedy decoding's AMX screen (`packed_matmul.screen_head`, PackedArgmaxScreened): the same
tokens as the kernel that reads every tile, on random heads, on near-ties the bf16 screen ranks
wrongly, on exact ties and on every fallback (more than 16 rows, NaN, huge values, too many close
columns); the screen's layout against a hand-written index map; decoding through it."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from marco_jax.infer.generate import generate
from marco_jax.infer.sampling import packed_greedy_tokens
from marco_jax.model.config import Qwen2Config
from marco_jax.model.packed_matmul import (
    greedy_screen_available,
    pack_kernel,
    screen_head,
    screen_stats,
)
from marco_jax.model.qwen2 import init_model

generate_module = importlib.import_module("marco_jax.infer.generate")  # the package's
# `generate` is the function
pytestmark = pytest.mark.skipif(not greedy_screen_available(),
                                reason="no AMX tiles on this CPU (or the kernels did not build)")

_tokens = jax.jit(packed_greedy_tokens, static_argnums=2)
_screen = jax.jit(screen_head)


def _heads(w: np.ndarray, dtype: str = "float32"):
    kernel = jnp.asarray(w).astype(dtype)
    packed = pack_kernel(kernel, dtype=dtype)
    return packed, _screen(packed, kernel)


def _both(x: np.ndarray, w: np.ndarray, columns: int | None = None, dtype: str = "float32"):
    """(tokens reading every tile, screened tokens, what the screened call did)."""
    packed, screened = _heads(w, dtype)
    every = np.asarray(_tokens(jnp.asarray(x), packed, columns))
    before = screen_stats()
    fast = np.asarray(_tokens(jnp.asarray(x), screened, columns).block_until_ready())
    after = screen_stats()
    return every, fast, {key: after[key] - before[key] for key in after}


@pytest.mark.parametrize("rows, k, n, columns", [
    (1, 128, 20000, None), (8, 128, 40000, None), (16, 96, 30000, 29999), (5, 48, 20000, 19001),
    (3, 200, 12345, None)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_screened_tokens_equal_reading_every_tile(rows, k, n, columns, dtype):
    rng = np.random.default_rng(rows * 1000 + k)
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    x = rng.normal(0, 1, (rows, k)).astype(np.float32)
    every, fast, did = _both(x, w, columns, dtype)
    np.testing.assert_array_equal(fast, every)
    assert did["screened"] == 1 and did["read_every_tile"] == 0
    assert 0 < did["exact_tiles"] <= max(16, -(-(columns or n) // 32) // 16)


def _rounded(v: np.ndarray) -> np.ndarray:
    """v rounded to bf16 (nearest even), as float64."""
    return np.asarray(jnp.asarray(v, jnp.float32).astype(jnp.bfloat16)).astype(np.float64)


def test_a_near_tie_the_screen_ranks_wrongly_is_settled_exactly():
    # Columns 100 and 7,000 differ in float32 by far less than bf16 resolves: the screen's
    # products (x and w rounded to bf16) rank them the other way, so only the exact pass gives
    # the float32 answer. Built until the screen's ranking is wrong, checked in float64.
    rng = np.random.default_rng(3)
    k, n = 64, 9000
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    x = rng.normal(0, 1, (1, k)).astype(np.float32)
    for _ in range(1000):
        a = (0.2 * np.sign(x[0]) + rng.normal(0, 0.05, k)).astype(np.float32)  # the largest
        b = (a + rng.normal(0, 2e-3, k)).astype(np.float32)
        exact = x[0].astype(np.float64) @ np.stack([a, b], 1).astype(np.float64)
        screened = _rounded(x[0]) @ _rounded(np.stack([a, b], 1))
        if (exact[0] > exact[1] + 1e-4) and screened[1] > screened[0]:
            break
    else:
        pytest.fail("no pair ranked wrongly by bf16 found")
    w[:, 100], w[:, 7000] = a, b
    products = x.astype(np.float64) @ w.astype(np.float64)
    assert np.argmax(products[0]) == 100
    assert np.argmax(_rounded(x) @ _rounded(w), axis=-1)[0] == 7000  # the screen alone: wrong
    every, fast, did = _both(x, w)
    assert fast[0] == every[0] == 100
    assert did["screened"] == 1


def test_exact_ties_take_the_first_column_across_groups():
    rng = np.random.default_rng(4)
    k, n = 64, 12000
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    x = np.abs(rng.normal(0, 1, (2, k))).astype(np.float32)
    for column in (9001, 333, 5000):  # equal columns in three groups, above all others
        w[:, column] = 0.1
    every, fast, did = _both(x, w)
    np.testing.assert_array_equal(fast, every)
    np.testing.assert_array_equal(fast, [333, 333])
    assert did["screened"] == 1


@pytest.mark.parametrize("case", ["17 rows", "nan in x", "huge x", "inf in the head",
                                  "all columns equal"])
def test_fallbacks_read_every_tile_and_agree(case):
    rng = np.random.default_rng(5)
    k, n = 64, 6000
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    x = rng.normal(0, 1, (4, k)).astype(np.float32)
    if case == "17 rows":
        x = rng.normal(0, 1, (17, k)).astype(np.float32)
    elif case == "nan in x":
        x[1, 5] = np.nan
    elif case == "huge x":
        x[2] *= 1e32
    elif case == "inf in the head":
        w[3, 10] = np.inf
    else:
        w[:] = 0.5
    every, fast, did = _both(x, w)
    np.testing.assert_array_equal(fast, every)
    # more than 16 rows never reach the screened kernel (`packed_argmax_parts` picks the other)
    fell_back = 0 if case == "17 rows" else 1
    assert did == {"screened": 0, "read_every_tile": fell_back, "exact_tiles": 0}
    if case == "all columns equal":
        assert (fast == 0).all()


def test_the_screen_layout_follows_its_index_map():
    rng = np.random.default_rng(6)
    k, n = 40, 150  # both padded: to 64 contraction rows, to 192 columns
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    _, screened = _heads(w)
    screen = np.asarray(screened.screen.astype(jnp.float32))
    assert screen.shape == (3, 2, 4, 16, 16, 2)
    expected = np.zeros((3, 2, 4, 16, 16, 2), np.float32)
    rounded = _rounded(w).astype(np.float32)
    for g, c, j, p, col, e in np.ndindex(*expected.shape):
        row, column = 32 * c + 2 * p + e, 64 * g + 16 * j + col
        if row < k and column < n:
            expected[g, c, j, p, col, e] = rounded[row, column]
    np.testing.assert_array_equal(screen, expected)
    norms = np.asarray(screened.screen_norms)
    np.testing.assert_allclose(norms, [
        np.linalg.norm(rounded, axis=0).max(),
        np.linalg.norm(rounded.astype(np.float64) - w, axis=0).max(),
        np.linalg.norm(w, axis=0).max()], rtol=1e-5)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_greedy_generation_screens_the_head_and_keeps_its_tokens(param_dtype, monkeypatch):
    config = Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=10_000.0, initializer_range=0.3, param_dtype=param_dtype)
    model = init_model(config, seed=3)
    assert generate_module.screens_head(model)
    prompts = np.random.default_rng(7).integers(0, config.vocab_size, (3, 12))
    before = screen_stats()
    screened = np.asarray(generate(model, prompts, 16, eos_ids=()).tokens)
    after = screen_stats()
    # the prefill's token and 15 steps, each one screened call
    assert after["screened"] - before["screened"] == 16
    assert after["read_every_tile"] == before["read_every_tile"]
    monkeypatch.setattr(generate_module, "greedy_screen_available", lambda: False)
    other = init_model(config, seed=3)  # a model of its own: no kept screened head
    plain = np.asarray(generate(other, prompts, 16, eos_ids=()).tokens)
    assert screen_stats() == after
    np.testing.assert_array_equal(screened, plain)
    assert len(np.unique(screened)) > 10  # not one repeated token


def test_the_memory_budget_counts_the_screen(monkeypatch):
    """`packs_head` counts the screen's bf16 copy with the packed head and layers: a budget
    between the two totals packs the head only where no screen is built."""
    config = Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = init_model(config, seed=3)
    head = model.lm_head_source()
    layers = jax.tree.leaves(nnx.state(model.model.layers))
    packed_bytes = 4 * (head.size + sum(a.size for a in layers))
    budget = packed_bytes + head.size  # the screen's 2 bytes a weight would not fit
    monkeypatch.setattr(generate_module, "_this_host_memory",
                        lambda: budget / generate_module.LAYER_COPY_MAX_RAM_FRACTION)
    assert generate_module.screens_head(model) and not generate_module.packs_head(model)
    monkeypatch.setattr(generate_module, "greedy_screen_available", lambda: False)
    assert generate_module.packs_head(model)
