"""marco_jax: Marco-LLM (multilingual continual pretraining of Qwen2) in JAX/Flax."""

from marco_jax import platform as _platform

# Before anything imports JAX or TensorFlow: no libtpu probe on machines without TPU chips, no
# TensorFlow C++ start-up lines (explicit JAX_PLATFORMS / TF_CPP_MIN_LOG_LEVEL always win).
_platform.choose_platforms()
_platform.quiet_tensorflow()

__version__ = "0.1.0"
