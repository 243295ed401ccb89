"""Exact resume: a run restored in a new process -- on the same, fewer or more hosts -- produces
the same next 50 global batches as the uninterrupted run (hash-equal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_corpus import build_corpus

WORKER = Path(__file__).with_name("data_resume_worker.py")
N, NEXT = 20, 50


def run_worker(tmp: Path, name: str, corpus: Path, *args: str) -> list[str]:
    out = tmp / f"{name}.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(WORKER), str(corpus), str(out), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("resume")
    corpus = build_corpus(tmp / "corpus", shared_data)
    hashes = run_worker(tmp, "full", corpus, "--steps", str(N + NEXT), "--save-at", str(N),
                        "--state-out", str(tmp / "state_1host.json"))
    return tmp, corpus, hashes


def test_resume_same_host_count(uninterrupted):
    tmp, corpus, full = uninterrupted
    resumed = run_worker(tmp, "resumed", corpus, "--steps", str(NEXT), "--restore",
                         str(tmp / "state_1host.json"))
    assert resumed == full[N:]
    assert len(set(full)) == len(full)  # batches differ from each other


def test_resume_from_two_hosts_onto_one(uninterrupted):
    tmp, corpus, full = uninterrupted
    two = run_worker(tmp, "two", corpus, "--hosts", "2", "--steps", str(N + 1), "--save-at",
                     str(N), "--state-out", str(tmp / "state_2hosts.json"))
    assert two == full[:N + 1]  # the global stream does not depend on the host count
    state = json.loads((tmp / "state_2hosts.json").read_text())
    assert state["step"] == N and len(state["lanes"]) == 8
    resumed = run_worker(tmp, "two_to_one", corpus, "--steps", str(NEXT), "--restore",
                         str(tmp / "state_2hosts.json"))
    assert resumed == full[N:]


def test_resume_from_one_host_onto_four(uninterrupted):
    tmp, corpus, full = uninterrupted
    resumed = run_worker(tmp, "one_to_four", corpus, "--hosts", "4", "--steps", str(NEXT),
                         "--restore", str(tmp / "state_1host.json"))
    assert resumed == full[N:]


def test_state_from_another_config_is_refused(uninterrupted, tmp_path):
    tmp, corpus, _ = uninterrupted
    state = json.loads((tmp / "state_1host.json").read_text())
    state["seed"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(state))
    proc = subprocess.run([sys.executable, str(WORKER), str(corpus), str(tmp_path / "o.json"),
                           "--steps", "1", "--restore", str(bad)],
                          capture_output=True, text=True, env={**os.environ,
                                                               "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0 and "seed=99 in the checkpoint" in proc.stderr


def test_real_two_process_run_gathers_the_global_state(uninterrupted):
    """Two jax.distributed CPU processes: get_state() all-gathers every lane on both hosts, and
    the gathered state equals the single-host run's state at the same step."""
    import socket

    tmp, corpus, _ = uninterrupted
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp / "multihost"
    out.mkdir()
    worker = Path(__file__).with_name("data_multihost_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, str(worker), str(corpus), str(out), str(p),
                               str(port), str(N)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    single = json.loads((tmp / "state_1host.json").read_text())
    for p in (0, 1):
        got = json.loads((out / f"host{p}.json").read_text())
        assert got["rows"] == list(range(4 * p, 4 * p + 4))
        assert got["state"] == single
