"""bench/bench_kernel_builds.py, the in-process A/B of two builds of the CPU kernels: two builds of
the same sources give bit-equal outputs on every kind of case (the writing attention kernel's
carrying its caches from call to call), and wrong input is one line, exit status 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marco_jax.model.native import kernels_available

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_kernel_builds.py"
KERNELS = REPO / "marco_jax" / "model" / "cpu_kernels"


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


@pytest.mark.skipif(not kernels_available(), reason="no C++ compiler for the CPU kernels")
def test_two_builds_of_the_same_sources_agree_bit_for_bit():
    done = _bench("--a", str(KERNELS), "--b", str(KERNELS), "--rounds", "2",
                  "--cases", "mm:3:256x2048+256x512,attn:2:1024:1000,attnw:2:1024:1000:2x2x32,"
                  "greedy:3:64x5000", "--warm")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines()
             if line.startswith(("mm:", "attn:", "attnw:", "greedy:")) and "B / A" in line]
    assert len(lines) == 4, done.stdout
    for line in lines:
        assert line.endswith("max |B - A| 0.0e+00"), line
        assert "B / A" in line


@pytest.mark.parametrize("args, says", [
    (["--a", "no-such-revision-xyz"], "no-such-revision-xyz: not a folder of kernel sources"),
    (["--a", str(KERNELS), "--cases", "mm:0:64x64"], "--cases 'mm:0:64x64': expected"),
    (["--a", str(KERNELS), "--cases", "attn:2:64:65"], "--cases 'attn:2:64:65': expected"),
    (["--a", str(KERNELS), "--cases", "attnw:2:0:0"], "--cases 'attnw:2:0:0': expected"),
    (["--a", str(KERNELS), "--cases", "attn:2:64:32:2x2x24"],
     "--cases 'attn:2:64:32:2x2x24': expected"),
    (["--a", str(KERNELS), "--cases", "attn:2:64:32:2x2"], "--cases 'attn:2:64:32:2x2': expected"),
    (["--a", str(KERNELS), "--cases", "greedy:0:64x64"], "--cases 'greedy:0:64x64': expected"),
    (["--a", str(KERNELS), "--rounds", "1"], "--rounds 1: expected >= 2"),
])
def test_wrong_input_is_one_line_and_exit_2(args, says, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_kernel_builds", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(BENCH), *args])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
