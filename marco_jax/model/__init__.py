"""Qwen2 in Flax NNX."""

from marco_jax.model.config import PRESETS, Qwen2Config, from_experiment, get_preset
from marco_jax.model.init import abstract_model, sharded_init_state
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.qwen2 import Qwen2ForCausalLM, init_model

__all__ = ["PRESETS", "KVCache", "Qwen2Config", "Qwen2ForCausalLM", "abstract_model",
           "from_experiment", "get_preset", "init_model", "sharded_init_state"]
