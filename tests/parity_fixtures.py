"""Helpers for tests that compare our model with transformers': put an in-memory HF model's
weights into ours (through the conversion table, no disk round trip), and make random models
decode non-degenerately."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from marco_jax.convert.mapping import rule_for
from marco_jax.model.config import Qwen2Config
from marco_jax.model.qwen2 import Qwen2ForCausalLM, init_model


def load_hf_weights(hf_model, **runtime) -> Qwen2ForCausalLM:
    """Our model holding the HF model's weights, placed through the conversion table (numpy
    assembly on an abstract model: no random init, no per-tensor device ops)."""
    config = Qwen2Config.from_hf_dict(hf_model.config.to_dict(), **runtime)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: init_model(config)))
    pure = nnx.to_pure_dict(state)
    pure = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), pure)
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        rule, layer = rule_for(name)
        parent = pure
        for key in rule.ours[:-1]:
            parent = parent[key]
        value = rule.to_ours(tensor.detach().numpy(), config)
        if layer is None:
            parent[rule.ours[-1]] = value
        else:
            parent[rule.ours[-1]][layer] = value
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)


def sharpen(hf_model, factor: float = 6.0):
    """Random weights at the fixture's scale give near-uniform attention, so greedy decoding just
    repeats one token. Scaling q/k (peaked attention) and gate/up (stronger MLP) makes the
    continuation depend on the context, so the greedy comparison tests something."""
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "gate_proj.weight",
                              "up_proj.weight")):
                p.mul_(factor)
    return hf_model


@contextlib.contextmanager
def rounded_linears() -> Iterator[None]:
    """transformers' `nn.Linear` layers (lm head included) computing on bf16-rounded inputs and
    weights with fp32 sums and an fp32 bias: `model.matmul_dtype=bfloat16` with fp32 compute."""
    original = torch.nn.Linear.forward

    def forward(module, x):
        return torch.nn.functional.linear(x.bfloat16().float(), module.weight.bfloat16().float(),
                                          module.bias)

    torch.nn.Linear.forward = forward
    try:
        yield
    finally:
        torch.nn.Linear.forward = original
