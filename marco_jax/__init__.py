"""marco_jax: Marco-LLM (multilingual continual pretraining of Qwen2) in JAX/Flax."""

from marco_jax import host_malloc as _host_malloc
from marco_jax import platform as _platform

# Before anything imports JAX or TensorFlow: no libtpu probe on machines without TPU chips, no
# TensorFlow C++ start-up lines (explicit JAX_PLATFORMS / TF_CPP_MIN_LOG_LEVEL always win).
_platform.choose_platforms()
_platform.quiet_tensorflow()
# `python -m marco_jax.<cli>` on CPU: re-executed once with transparent huge pages for XLA's
# host temporaries (marco_jax/host_malloc.py), before anything heavy is imported.
_host_malloc.maybe_reexec_cli(_platform.jax_runs_on_cpu_only)

__version__ = "0.1.0"
