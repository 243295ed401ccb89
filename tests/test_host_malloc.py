"""marco_jax/host_malloc.py: CLIs on CPU re-execute themselves with glibc's transparent-huge-page
tunable, so the kernel stops faulting in XLA's host temporaries 4 KiB at a time on every call.
The reference is the kernel's own page-fault counter (getrusage) beside XLA's reported temporary
size, in fresh processes (tunables are read at process start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marco_jax import host_malloc, platform

REPO = Path(__file__).resolve().parents[1]
needs_thp = pytest.mark.skipif(
    (host_malloc.glibc_version() or (0, 0)) < (2, 35) or not host_malloc.kernel_offers_thp(),
    reason="needs glibc >= 2.35 and a kernel offering transparent huge pages")

# A jitted call whose 256 MB intermediate (tanh of a [8192, 64] x [64, 8192] product) is an XLA
# temporary above glibc's 32 MB mmap ceiling; re-executes itself first when asked, then prints
# its pid, GLIBC_TUNABLES, the temp size and each call's minor page faults.
PROBE = """
import json, os, resource, sys
from marco_jax import host_malloc
pid = int(sys.argv[2]) if len(sys.argv) > 2 else os.getpid()
if sys.argv[1] == "reexec":
    host_malloc.reexec_with_hugepages(True, [*sys.orig_argv, str(pid)])
import jax, jax.numpy as jnp
a, b = jnp.ones((8192, 64)), jnp.ones((64, 8192))
f = jax.jit(lambda a, b: (jnp.tanh(a @ b).T @ a).sum())
temp = f.lower(a, b).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"pid": os.getpid(), "first_pid": pid, "temp": temp, "faults": faults,
                  "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT_VARIABLE)}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def _probe(mode: str, **extra_env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], env=_clean_env(**extra_env),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values: list[int]) -> float:
    s = sorted(values)
    return (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2


@needs_thp
def test_reexecuted_process_stops_refaulting_xla_temporaries():
    default = _probe("default")
    tuned = _probe("reexec")
    assert default["tunables"] == "" and tuned["tunables"] == host_malloc.TUNABLE_SETTING
    assert tuned["pid"] == tuned["first_pid"]  # execve: the same process, re-executed once
    pages = default["temp"] / 4096
    assert pages > 32 * 2**20 / 4096  # above glibc's mmap ceiling: a fresh mmap per call
    # glibc defaults: every call after the first faults in (at least half of) the temp again.
    assert _median(default["faults"][1:]) >= 0.5 * pages, default
    # Huge pages: 512x fewer faults per byte; typical calls are near zero (medians: a shared VM
    # shows the odd call with a few thousand faults from elsewhere).
    assert _median(tuned["faults"][1:]) <= 0.1 * _median(default["faults"][1:]), tuned


def test_opt_out_and_existing_setting_leave_the_process_alone():
    assert not host_malloc.wants_hugepages(True, {"MARCO_HOST_MALLOC": " Default "})
    assert not host_malloc.wants_hugepages(
        True, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"})
    assert not host_malloc.wants_hugepages(False, {})  # an accelerator run
    if host_malloc.glibc_version() and host_malloc.glibc_version() >= (2, 35) \
            and host_malloc.kernel_offers_thp():
        assert host_malloc.wants_hugepages(True, {})


def test_cli_command_lines_reexecute_with_the_tunable_appended(monkeypatch):
    calls = []
    monkeypatch.setattr(host_malloc.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(host_malloc, "wants_hugepages", lambda cpu_only: cpu_only)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    argv = ["/usr/bin/python3", "-u", "-X", "dev", "-m", "marco_jax.train", "--config", "c.py"]
    host_malloc.maybe_reexec_cli(lambda: True, argv)
    (program, args, env), = calls
    assert program == sys.executable and args == [sys.executable, *argv[1:]]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # a copy was changed
    for other in (["python", "-m", "marco_jax.convert", "hf-to-orbax"],  # not a JAX loop
                  ["python", "-c", "import marco_jax", "-m", "marco_jax.train"],
                  ["python", "script.py", "-m", "marco_jax.train"], ["python", "-m"],
                  ["python"], ["/venv/bin/pytest", "-q"]):
        host_malloc.maybe_reexec_cli(lambda: True, other)
    host_malloc.maybe_reexec_cli(lambda: False, argv)  # accelerator: left alone
    assert len(calls) == 1
    assert {host_malloc.cli_module(["py", "-m", m]) for m in host_malloc.CLI_MODULES} == \
        set(host_malloc.CLI_MODULES)


def test_failed_exec_runs_on_unchanged(monkeypatch):
    def refuse(*_):
        raise FileNotFoundError("no interpreter")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_malloc.os, "execve", refuse)
    monkeypatch.setattr(host_malloc, "wants_hugepages", lambda cpu_only: True)
    host_malloc.reexec_with_hugepages(True, ["python", "-m", "marco_jax.train"])  # no raise
    assert not host_malloc.hugepages_requested()


@needs_thp
def test_cli_still_reports_bad_input_in_one_line_after_reexecuting():
    missing = "/nonexistent/marco_ckpt"
    proc = subprocess.run([sys.executable, "-m", "marco_jax.generate", "--checkpoint", missing,
                           "--prompt", "hi"], env=_clean_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and missing in proc.stderr, proc.stderr


def test_cpu_only_decision(monkeypatch):
    cpu_only = platform.jax_runs_on_cpu_only
    assert cpu_only({"JAX_PLATFORMS": "cpu"}) and cpu_only({"JAX_PLATFORMS": " cpu "})
    for value in ("cuda,cpu", "tpu", "cpu,cuda", "rocm"):
        assert not cpu_only({"JAX_PLATFORMS": value}), value
    # unset (or empty, which JAX reads as unset): what this machine has decides
    for plugins, tpu, expected in (("cpu", False, True), ("cuda,cpu", False, False),
                                   ("cpu", True, False), (None, False, False)):
        monkeypatch.setattr(platform, "non_tpu_platforms", lambda p=plugins: p)
        monkeypatch.setattr(platform, "tpu_device_present", lambda t=tpu: t)
        assert cpu_only({}) is expected and cpu_only({"JAX_PLATFORMS": ""}) is expected


def test_glibc_version_and_thp_mode_parsing(tmp_path):
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
    if libc.startswith("glibc "):
        assert ".".join(map(str, host_malloc.glibc_version())) == libc.split()[1]
    else:
        assert host_malloc.glibc_version() is None
    mode = tmp_path / "enabled"
    for text, offered in (("always [madvise] never\n", True), ("[always] madvise never\n", True),
                          ("always madvise [never]\n", False)):
        mode.write_text(text)
        assert host_malloc.kernel_offers_thp(mode) is offered
    assert host_malloc.kernel_offers_thp(tmp_path / "missing") is False
