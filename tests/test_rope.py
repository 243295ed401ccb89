"""RoPE tables: values against transformers' `Qwen2RotaryEmbedding`, and, on CPU, computed once
per compiled forward and backward pass (not re-run inside every layer's q/k rotation)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_fixtures import make_hf_config
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from marco_jax.model.config import get_preset
from marco_jax.model.qwen2 import init_model, rope_cos_sin


@pytest.mark.parametrize("theta", [10_000.0, 1_000_000.0])
def test_rope_tables_match_transformers(theta):
    hf_cfg = make_hf_config(hidden=96, heads=6, kv_heads=2, rope_theta=theta)  # head_dim 16
    positions = np.random.default_rng(0).integers(0, 4096, size=(3, 37))
    with torch.no_grad():
        cos_ref, sin_ref = Qwen2RotaryEmbedding(hf_cfg)(torch.zeros(1), torch.from_numpy(positions))
    cos, sin = rope_cos_sin(jnp.asarray(positions), 16, theta)
    # The same fp32 angles on both sides (max difference 6e-8 here): a wrong layout, theta or
    # frequency would differ by O(1).
    np.testing.assert_allclose(np.asarray(cos), cos_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), sin_ref.numpy(), atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion decisions")
def test_compiled_forward_and_backward_compute_the_rope_tables_once():
    # XLA:CPU fused cos(concat(freqs, freqs)) into every layer's q and k rotation and reran it
    # per head: ~1.5 ms per layer of a 1024-token prefill (qwen2.py, rope_cos_sin).
    cfg = get_preset("tiny", num_hidden_layers=3, vocab_size=256)
    graphdef, state = nnx.split(init_model(cfg))
    tokens = jnp.ones((2, 32), jnp.int32)

    def loss(state):
        return nnx.merge(graphdef, state)(tokens).sum()

    for fn in (loss, jax.grad(loss)):
        hlo = jax.jit(fn).lower(state).compile().as_text()
        assert len(re.findall(r" cosine\(", hlo)) == 1, "cos recomputed per use"
        assert len(re.findall(r" sine\(", hlo)) == 1, "sin recomputed per use"
