"""A persistent JAX compilation cache for the CLIs, so a restarted run loads its compiled step.

A run restarted after preemption, a resume, the next stage of the same config, or the next
`generate` / `evaluate` call on the same model compiles the same programs again: minutes for a 7B
train step on TPU, seconds on CPU. With the cache, JAX stores every executable that took longer
than `jax_persistent_cache_min_compile_time_secs` (1 s) to compile, keyed by the program, the
compile options, the devices and the JAX/XLA versions, and later processes load it instead of
compiling (as MaxText's `jax_cache_dir`). A loaded executable is the one a fresh compile of the
same key would build, so results do not change (tests/test_compile_cache.py checks the value).

Where: `train.compilation_cache_dir` (train / sft / dpo configs), "auto" = a per-user directory
(`$XDG_CACHE_HOME/marco_jax/jax_compilation_cache`, default `~/.cache/...`) capped at
`DEFAULT_MAX_BYTES` with least-recently-used eviction; a path (local or gs://, where eviction is
not available) or "" to switch it off. JAX's own settings win: JAX_COMPILATION_CACHE_DIR in the
environment names the directory, JAX_ENABLE_COMPILATION_CACHE=false switches it off.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from marco_jax.paths import is_remote

AUTO = "auto"
# JAX's own reading of a false boolean variable (jax._src.config.bool_env)
_FALSE = ("n", "no", "f", "false", "off", "0")
DEFAULT_MAX_BYTES = 4 << 30  # LRU-evicted beyond this (local directories only)


def default_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "marco_jax" / "jax_compilation_cache"


def resolve_cache_dir(setting: str, env: Mapping[str, str] = os.environ) -> str | None:
    """The directory the cache will use for `setting` ("auto", "" or a path), or None for off.
    JAX_COMPILATION_CACHE_DIR (read by JAX itself at import) wins over the setting."""
    if env.get("JAX_ENABLE_COMPILATION_CACHE", "").lower() in _FALSE:
        return None
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return env["JAX_COMPILATION_CACHE_DIR"]
    if setting == AUTO:
        return str(default_cache_dir(env))
    return setting or None


def enable_compilation_cache(setting: str = AUTO) -> str | None:
    """Point JAX's persistent compilation cache at `resolve_cache_dir(setting)`; call before the
    first compile. Returns the directory in use, or None when the cache stays off."""
    import jax

    directory = resolve_cache_dir(setting)
    if directory is None:
        return None
    if not is_remote(directory):
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. a read-only home: run uncached rather than not at all
            logging.getLogger(__name__).warning("compilation cache off: %s", e)
            return None
        # JAX's eviction needs filelock (a core dependency; checked so a bare env still runs)
        if (jax.config.jax_compilation_cache_max_size == -1
                and importlib.util.find_spec("filelock") is not None):
            jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
