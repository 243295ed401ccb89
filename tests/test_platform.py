"""No libtpu / TPU-probe output on a machine without TPU chips (issue 13 item 2), and the user's
explicit JAX_PLATFORMS always wins. The subprocesses run without the JAX_PLATFORMS=cpu that
conftest.py sets, as a fresh shell would."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from marco_jax import platform

REPO = Path(__file__).resolve().parents[1]
# lines libtpu prints when it initialises without chips ("Failed to find host bounds ...",
# "unexpected worker hostname ...", "WARNING: Logging before InitGoogle() ...")
PROBE_LINE = re.compile(r"tpu|host bounds|worker hostname|InitGoogle", re.IGNORECASE)
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (the `tpu` extra): nothing to probe")
needs_no_tpu = pytest.mark.skipif(platform.tpu_device_present(),
                                  reason="this machine has TPU chips: the probe is wanted here")


def _fresh_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    return env


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_fresh_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_explicit_jax_platforms_always_wins():
    for value in ("tpu", "", "cuda,cpu"):
        env = {"JAX_PLATFORMS": value}
        assert platform.choose_platforms(env) is None
        assert env == {"JAX_PLATFORMS": value}
    env = {"JAX_FORCE_TPU_INIT": "1"}
    assert platform.choose_platforms(env) is None and "JAX_PLATFORMS" not in env


@pytest.mark.parametrize("plugins,expected", [
    ([], "cpu"),
    (["xla_cuda12", "jax_cuda12_plugin"], "cuda,cpu"),
    (["xla_rocm7"], "rocm,cpu"),
    (["xla_cuda13", "some_vendor_plugin"], None),  # a platform we cannot name: do not guess
])
def test_platforms_named_from_installed_plugins(monkeypatch, plugins, expected):
    monkeypatch.setattr(platform, "_installed_plugin_names", lambda: plugins)
    assert platform.non_tpu_platforms() == expected


def test_tpu_vm_and_machines_without_libtpu_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "_installed_plugin_names", lambda: [])
    monkeypatch.setattr(platform, "tpu_device_present", lambda: True)
    env: dict[str, str] = {}
    assert platform.choose_platforms(env) is None and env == {}
    monkeypatch.setattr(platform, "tpu_device_present", lambda: False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(platform.importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a))
    assert platform.choose_platforms(env) is None and env == {}


def test_tensorflow_log_level_default_and_override():
    env: dict[str, str] = {}
    platform.quiet_tensorflow(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "3"}
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    platform.quiet_tensorflow(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}


@needs_libtpu
@needs_no_tpu
def test_plain_jax_probes_tpu_here():
    """The reference: without marco_jax, JAX with libtpu prints the probe lines on this machine
    (so the next test's silence is the fix, not a quiet machine)."""
    proc = _run("import jax; print(jax.devices()[0].platform)")
    assert proc.returncode == 0, proc.stderr
    assert PROBE_LINE.search(proc.stderr), proc.stderr


@needs_no_tpu
def test_import_marco_jax_picks_cpu_without_probe():
    proc = _run("import marco_jax, jax, os; print(jax.devices()[0].platform); "
                "print(os.environ.get('JAX_PLATFORMS'))")
    assert proc.returncode == 0, proc.stderr
    platform_name, chosen = proc.stdout.split()
    assert platform_name == "cpu"
    assert [line for line in proc.stderr.splitlines() if PROBE_LINE.search(line)] == []
    if importlib.util.find_spec("libtpu") is not None:
        assert chosen == "cpu"  # no GPU plugin is installed here


@needs_no_tpu
def test_jax_imported_first_still_quiet():
    """A notebook that imports jax before marco_jax: the config is updated before first use."""
    proc = _run("import jax, marco_jax; print(jax.devices()[0].platform)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu"]
    assert [line for line in proc.stderr.splitlines() if PROBE_LINE.search(line)] == []


def test_amx_flag_read_from_cpuinfo(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert platform.cpu_has_amx(amx) is True
    assert platform.cpu_has_amx(plain) is False
    assert platform.cpu_has_amx(tmp_path / "missing") is None
