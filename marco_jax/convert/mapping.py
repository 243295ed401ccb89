"""The one table that maps Hugging Face Qwen2 tensor names/layouts onto our parameter tree.

HF stores Linear weights as [out, in]; we store [in, out] with heads split out (see
`marco_jax.model.qwen2`). Per-layer HF tensors `model.layers.{i}.X` map to row i of our stacked
parameter `model.layers.X`. Both directions are pure reshapes/transposes, so a round trip is
bit-exact.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from marco_jax.model.config import Qwen2Config

LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Vocabulary tensors are streamed (and stored chunked) in blocks of rows of about this size.
VOCAB_BLOCK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class TensorRule:
    ours: tuple[str, ...]  # path in our parameter tree
    per_layer: bool
    hf_shape: Callable[[Qwen2Config], tuple[int, ...]]
    to_ours: Callable[[np.ndarray, Qwen2Config], np.ndarray]
    to_hf: Callable[[np.ndarray, Qwen2Config], np.ndarray]
    # Vocabulary tensors are HF [vocab, embed]; this is the vocab axis of ours. Both transforms
    # also map a block of vocab rows to the matching block, so they can be streamed in blocks.
    ours_vocab_axis: int | None = None


def _q_kernel(w, c):  # [nh*d, h] -> [h, nh, d]
    return w.T.reshape(c.hidden_size, -1, c.dim_per_head)


def _kernel_back(w, c):  # [h, n, d] -> [n*d, h]
    return w.reshape(w.shape[0], -1).T


def _heads_bias(b, c):  # [n*d] -> [n, d]
    return b.reshape(-1, c.dim_per_head)


def _o_kernel(w, c):  # [h, nh*d] -> [nh, d, h]
    return w.T.reshape(c.num_attention_heads, c.dim_per_head, c.hidden_size)


def _o_back(w, c):  # [nh, d, h] -> [h, nh*d]
    return w.reshape(-1, w.shape[-1]).T


def _t(w, c):
    return w.T


def _same(w, c):
    return w


def _flat(b, c):
    return b.reshape(-1)


def _rules() -> dict[str, TensorRule]:
    q = lambda c: c.num_attention_heads * c.dim_per_head  # noqa: E731
    kv = lambda c: c.num_key_value_heads * c.dim_per_head  # noqa: E731
    h = lambda c: c.hidden_size  # noqa: E731
    f = lambda c: c.intermediate_size  # noqa: E731
    L = ("model", "layers")
    rules = {
        "model.embed_tokens.weight": TensorRule(("model", "embed_tokens", "embedding"), False,
                                                lambda c: (c.vocab_size, c.hidden_size),
                                                _same, _same, ours_vocab_axis=0),
        "model.norm.weight": TensorRule(("model", "norm", "scale"), False,
                                        lambda c: (c.hidden_size,), _same, _same),
        "lm_head.weight": TensorRule(("lm_head", "kernel"), False,
                                     lambda c: (c.vocab_size, c.hidden_size), _t, _t,
                                     ours_vocab_axis=1),
    }
    for proj, n in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
        rules[f"self_attn.{proj}.weight"] = TensorRule(
            (*L, "self_attn", proj, "kernel"), True, lambda c, n=n: (n(c), c.hidden_size),
            _q_kernel, _kernel_back)
        rules[f"self_attn.{proj}.bias"] = TensorRule(
            (*L, "self_attn", proj, "bias"), True, lambda c, n=n: (n(c),), _heads_bias, _flat)
    rules["self_attn.o_proj.weight"] = TensorRule(
        (*L, "self_attn", "o_proj", "kernel"), True, lambda c: (h(c), q(c)), _o_kernel, _o_back)
    for proj, shape in (("gate_proj", lambda c: (f(c), h(c))), ("up_proj", lambda c: (f(c), h(c))),
                        ("down_proj", lambda c: (h(c), f(c)))):
        rules[f"mlp.{proj}.weight"] = TensorRule((*L, "mlp", proj, "kernel"), True, shape, _t, _t)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        rules[f"{norm}.weight"] = TensorRule((*L, norm, "scale"), True,
                                             lambda c: (h(c),), _same, _same)
    return rules


RULES = _rules()


def expected_hf_tensors(config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor name a HF Qwen2 checkpoint of this config must hold, with its shape."""
    out = {}
    for name, rule in RULES.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if rule.per_layer:
            for i in range(config.num_hidden_layers):
                out[f"model.layers.{i}.{name}"] = rule.hf_shape(config)
        else:
            out[name] = rule.hf_shape(config)
    return out


def rule_for(hf_name: str) -> tuple[TensorRule, int | None]:
    """(rule, layer index or None) for a HF tensor name; KeyError for unknown names."""
    m = LAYER_RE.match(hf_name)
    if m:
        rule = RULES[m.group(2)]
        if rule.per_layer:
            return rule, int(m.group(1))
    rule = RULES[hf_name]
    if rule.per_layer:
        raise KeyError(hf_name)
    return rule, None
