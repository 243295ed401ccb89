"""Qwen2 architecture config, paper presets, and the HF `config.json` bridge.

Architecture fields mirror Hugging Face's `Qwen2Config` names so that a `config.json` maps 1:1.
Runtime fields (dtypes, remat, scan, attention kernel) are ours and never go to HF.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_qkv_proj")
# "auto": per platform (`resolve_attention_impl`); kernels in marco_jax/model/attention.py.
ATTENTION_IMPLS = ("auto", "xla", "dot_product_attention", "splash", "cudnn")
LOGITS_DTYPES = ("float32", "bfloat16")
MATMUL_DTYPES = ("", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (Qwen2 always is)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    bos_token_id: int = 151643
    eos_token_id: int = 151643

    # Runtime (not part of the architecture).
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; bf16 on TPU/GPU, fp32 is faster on CPU
    # dtype the Linear and lm-head matmul operands are rounded to ("": the compute dtype);
    # products accumulate in fp32. float32 compute + bfloat16 here = torch.autocast's mixed
    # precision, several times faster on AMX CPUs (marco_jax/model/matmul.py).
    matmul_dtype: str = ""
    remat_policy: str = "none"
    scan_layers: bool = True
    attention_impl: str = "xla"
    # dtype of the lm head's logits in the training losses (marco_jax/model/logprobs.py):
    # float32, or bfloat16 to halve the head's HBM traffic (softmax math stays fp32).
    logits_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads and self.head_dim is None:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}"
            )
        for name in ("param_dtype", "dtype"):
            jnp.dtype(getattr(self, name))  # raises on an unknown dtype name
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype={self.matmul_dtype!r}; expected one of {MATMUL_DTYPES}")
        if self.logits_dtype not in LOGITS_DTYPES:
            raise ValueError(f"logits_dtype={self.logits_dtype!r}; expected one of {LOGITS_DTYPES}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_matmul_dtype(self) -> jnp.dtype:
        """The dtype matmul operands are rounded to (the compute dtype unless `matmul_dtype`)."""
        return jnp.dtype(self.matmul_dtype or self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> Qwen2Config:
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of this architecture (matches the built model)."""
        h, f, d = self.hidden_size, self.intermediate_size, self.dim_per_head
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + q + 2 * (h * kv + kv) + q * h
        per_layer = attn + 3 * h * f + 2 * h
        total = self.num_hidden_layers * per_layer + h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return total + (emb if include_embedding else 0)

    def train_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) of the matmuls: the
        standard 6N count plus causal attention. N counts parameters that take part in matmuls
        (a tied embedding once, as the lm_head matmul; an untied input embedding is a lookup);
        attention is 2 matmuls (QK^T, AV) x 2 (multiply-add) x 3 / 2 (the causal half) per layer,
        head and position. Rematerialisation is hardware work, not model work: not counted."""
        n = self.num_params()
        if not self.tie_word_embeddings:
            n -= self.vocab_size * self.hidden_size
        attn = self.num_hidden_layers * seq_len * self.num_attention_heads * self.dim_per_head
        return 6.0 * n + 6.0 * attn

    # ---- Hugging Face bridge -------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.Qwen2Config` loads."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "torch_dtype": self.param_dtype,
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **runtime: Any) -> Qwen2Config:
        """Build from a HF `config.json` dict; runtime fields come from keyword arguments."""
        if hf.get("model_type", "qwen2") != "qwen2":
            raise ValueError(f"config.json model_type={hf.get('model_type')!r}; expected 'qwen2'")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}; Qwen2 uses 'silu'")
        if hf.get("use_sliding_window", False):
            raise ValueError("config.json use_sliding_window=true is not supported (Qwen2 "
                             "checkpoints ship with it off)")
        rope_theta = hf.get("rope_theta")
        if rope_theta is None:  # transformers>=5 nests it under rope_parameters
            rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", 1_000_000.0)
        scaling = hf.get("rope_scaling") or {}
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"config.json rope_scaling={scaling!r} is not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                               "num_hidden_layers", "num_attention_heads") if k not in hf]
        if missing:
            raise ValueError(f"config.json lacks required fields {missing}")
        eos = hf.get("eos_token_id", 151643)
        if isinstance(eos, list):
            eos = eos[0]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id") or 151643,
            eos_token_id=eos if eos is not None else 151643,
            **runtime,
        )

    @classmethod
    def from_hf_json(cls, path: str | Path, **runtime: Any) -> Qwen2Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no config.json (expected a HF model directory)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_hf_dict(hf, **runtime)


# Paper presets (../shared/MARCO_PAPER.md, "Qwen2 architecture facts") and tiny test sizes.
PRESETS: dict[str, Qwen2Config] = {
    "qwen2-0.5b": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_hidden_layers=24, num_attention_heads=14,
                              num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            tie_word_embeddings=False, max_position_embeddings=131072),
    "qwen2-72b": Qwen2Config(vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                             num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                             tie_word_embeddings=False, max_position_embeddings=131072),
    # Tiny sizes for tests and the CPU demo; real Qwen2 vocabulary so the tokenizer fits.
    "tiny": Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=352,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        tie_word_embeddings=True, max_position_embeddings=4096),
    "tiny-20m": Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=384,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True, max_position_embeddings=4096),
}


def get_preset(name: str, **overrides: Any) -> Qwen2Config:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def resolve_attention_impl(impl: str, platform: str, dtype: str, seq_len: int) -> str:
    """The kernel `impl` means on `platform` ("tpu", "gpu"/"cuda", "cpu") for a compute `dtype`
    and sequence length. `auto`: splash on TPU when the length tiles (a multiple of 128), cuDNN
    on GPU in bf16/fp16, otherwise the XLA einsum path. Explicit choices pass through (their
    kernels refuse what they cannot run, naming the setting)."""
    if impl != "auto":
        return impl
    if platform == "tpu" and seq_len % 128 == 0:
        return "splash"
    if platform in ("gpu", "cuda") and dtype in ("bfloat16", "float16"):
        return "cudnn"
    return "xla"


RUNTIME_FIELDS = ("param_dtype", "dtype", "matmul_dtype", "remat_policy", "scan_layers",
                  "attention_impl", "logits_dtype")


def from_experiment(model_section: Any) -> Qwen2Config:
    """Resolve an experiment's typed `model` section (marco_jax.config.schema.ModelSection)."""
    runtime = {k: getattr(model_section, k) for k in RUNTIME_FIELDS}
    overrides = dict(model_section.overrides)
    known = {f.name for f in dataclasses.fields(Qwen2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model.overrides: unknown Qwen2Config fields {unknown}; known: "
                         f"{', '.join(sorted(known))}")
    if model_section.hf_config:
        return Qwen2Config.from_hf_json(model_section.hf_config, **runtime).replace(**overrides)
    return get_preset(model_section.preset, **runtime, **overrides)
