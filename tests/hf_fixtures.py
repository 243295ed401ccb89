"""Tiny random `transformers.Qwen2ForCausalLM` checkpoints: the independent reference for the
conversion and model-parity tests.

Every parameter (biases and norm scales included) is randomised, so a wrong mapping of any tensor
shows up in the logits; HF's own init would leave biases at zero and norms at one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


def make_hf_config(*, hidden: int = 48, heads: int = 6, kv_heads: int = 2, layers: int = 2,
                   tie: bool = True, vocab: int = 160, intermediate: int | None = None,
                   rope_theta: float = 10_000.0) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden + 8,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        tie_word_embeddings=tie, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=0, eos_token_id=1, use_sliding_window=False,
    )


def make_hf_model(tmp_path: str | Path, *, hidden: int = 48, heads: int = 6, kv_heads: int = 2,
                  layers: int = 2, tie: bool = True, vocab: int = 160, seed: int = 0,
                  intermediate: int | None = None, dtype: torch.dtype = torch.float32,
                  max_shard_size: str | int | None = None, name: str = "hf",
                  rope_theta: float = 10_000.0) -> tuple[Path, transformers.Qwen2ForCausalLM]:
    """Build a random tiny Qwen2, `save_pretrained` it (safetensors) under `tmp_path/name`.

    Returns (checkpoint dir, the model in eval mode, in `dtype`). `max_shard_size` (e.g. "20KB")
    forces a sharded checkpoint with a `model.safetensors.index.json`.
    """
    config = make_hf_config(hidden=hidden, heads=heads, kv_heads=kv_heads, layers=layers, tie=tie,
                            vocab=vocab, intermediate=intermediate, rope_theta=rope_theta)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if name_.endswith("layernorm.weight") or name_ == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model = model.to(dtype)
    path = Path(tmp_path) / name
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path, model
