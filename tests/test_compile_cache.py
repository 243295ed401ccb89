"""The CLIs' persistent compilation cache: a second process loads what the first compiled, with
the same result; the setting, JAX's own variables and the train config key decide where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from marco_jax.compile_cache import default_cache_dir, resolve_cache_dir

ROOT = Path(__file__).resolve().parents[1]

# Compiles one function with the cache at argv[1] ("" = off) and prints: the directory in use,
# the function's value, and how many executables JAX loaded from the cache.
PROBE = """
import sys
import jax, jax.numpy as jnp
from marco_jax.compile_cache import enable_compilation_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
directory = enable_compilation_cache(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(directory, repr(float(f(jnp.arange(64.0).reshape(8, 8) / 64))), len(hits))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    return env


def _probe(setting: str, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], env=_env(**env), cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.split()


def test_second_process_loads_the_executable_and_computes_the_same(tmp_path):
    cache = tmp_path / "cache"
    first = _probe(str(cache))
    assert first[0] == str(cache) and first[2] == "0"
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the executable was written
    second = _probe(str(cache))
    assert second[1] == first[1]  # bit-identical value (repr of the float)
    assert int(second[2]) >= 1  # loaded, not compiled
    # nothing new written; only the LRU access-time files may change
    assert {n for n in (p.name for p in cache.iterdir()) if not n.endswith("-atime")} == \
        {n for n in entries if not n.endswith("-atime")}


def test_off_and_jax_environment_win(tmp_path):
    off = _probe("")
    assert off[0] == "None" and off[2] == "0"
    named = tmp_path / "from_env"
    got = _probe(str(tmp_path / "ignored"), JAX_COMPILATION_CACHE_DIR=str(named))
    assert got[0] == str(named) and any(named.iterdir())
    assert not (tmp_path / "ignored").exists()
    assert _probe(str(named), JAX_ENABLE_COMPILATION_CACHE="false")[0] == "None"


def test_resolve_table():
    home = {"HOME": "/h"}
    assert resolve_cache_dir("auto", {"XDG_CACHE_HOME": "/x"}) == \
        "/x/marco_jax/jax_compilation_cache"
    assert default_cache_dir({}).parts[-2:] == ("marco_jax", "jax_compilation_cache")
    assert resolve_cache_dir("", home) is None
    assert resolve_cache_dir("gs://b/c", home) == "gs://b/c"
    assert resolve_cache_dir("auto", {"JAX_COMPILATION_CACHE_DIR": "/e"}) == "/e"
    assert resolve_cache_dir("/p", {"JAX_ENABLE_COMPILATION_CACHE": "0"}) is None


def test_train_config_key_reaches_jax(tmp_path):
    """`train.compilation_cache_dir` from the command line is the directory the run compiles
    into (the run itself replaced by a stub that reports JAX's setting)."""
    script = """
import sys, jax
from marco_jax.train.cli import run_cli
def runner(config, workdir):
    return {"status": "done", "step": 0, "workdir": jax.config.jax_compilation_cache_dir}
sys.exit(run_cli(sys.argv[1:], "prog", None, runner, "lm"))
"""
    cache = tmp_path / "c"
    out = subprocess.run(
        [sys.executable, "-c", script, "--config", "configs/demo_base.py", "--workdir",
         str(tmp_path / "w"), f"--config.train.compilation_cache_dir={cache}"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"done: step 0; workdir {cache}"
    assert cache.is_dir()
