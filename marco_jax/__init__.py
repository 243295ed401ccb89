"""marco_jax: Marco-LLM (multilingual continual pretraining of Qwen2) in JAX/Flax."""

__version__ = "0.1.0"
