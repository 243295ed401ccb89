"""Exact resume: SIGKILL mid-run + restart == one uninterrupted run, bit for bit (CPU, fp32);
SIGTERM saves and stops cleanly; a checkpoint of another layout is refused, mismatches named."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_fixtures import synthetic_iterators, tiny_config

from marco_jax.train.loop import train

RUNNER = Path(__file__).with_name("train_fixtures.py")
STEPS = 8
ONE = jax.devices()[:1]  # a one-device mesh: fast; sharding equality is tested elsewhere


def _start(workdir, delay):
    # Same environment as this process (conftest: CPU, 8 devices), so the programs are identical.
    env = dict(os.environ)
    env["PYTHONPATH"] = str(RUNNER.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(RUNNER), str(workdir), str(STEPS), str(delay)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, workdir, step, timeout=240):
    log = Path(workdir) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and any(json.loads(x)["step"] >= step
                                for x in log.read_text().splitlines() if x.strip()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the run")


def _losses(workdir):
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.setdefault(rec["step"], []).append(rec["loss"])
    return out


def _final_state(workdir):
    step = Path(workdir).absolute() / "checkpoints" / str(STEPS)
    return [ocp.StandardCheckpointer().restore(step / item) for item in ("params", "opt_state")]


def _assert_same_run(ref, run):
    ref_losses, run_losses = _losses(ref), _losses(run)
    assert sorted(run_losses) == list(range(1, STEPS + 1))
    for step, values in run_losses.items():
        # every (re)computation of a step, before and after each restart, is bit-identical
        assert set(values) == {ref_losses[step][0]}, (step, values, ref_losses[step])
    for x, y in zip(jax.tree.leaves(_final_state(ref)), jax.tree.leaves(_final_state(run)),
                    strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref")
    summary = train(tiny_config(STEPS), str(ref), iterators=synthetic_iterators, progress=False,
                    devices=ONE)
    assert summary["status"] == "done" and summary["step"] == STEPS
    return ref


def test_sigkill_then_restart_is_bit_identical(reference_run, tmp_path):
    p = _start(tmp_path, 0.3)
    _wait_for_step(p, tmp_path, 4)  # a checkpoint exists at step 3 (checkpoint.every=3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "checkpoints" / str(STEPS)).exists()
    p = _start(tmp_path, 0.0)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0 and f"SUMMARY done {STEPS}" in out, out
    _assert_same_run(reference_run, tmp_path)


def test_sigterm_saves_stops_and_resumes_exactly(reference_run, tmp_path):
    def preempting_iterators(config, process_index, process_count):
        it, _ = synthetic_iterators(config, process_index, process_count)
        it.on_batch = lambda k: os.kill(os.getpid(), signal.SIGTERM) if k == 4 else None
        return it, None

    summary = train(tiny_config(STEPS), str(tmp_path), iterators=preempting_iterators,
                    progress=False,
                    devices=ONE)
    assert summary["status"] == "preempted" and summary["step"] == 5
    assert (tmp_path / "checkpoints" / "5").exists()  # saved although checkpoint.every=3
    summary = train(tiny_config(STEPS), str(tmp_path), iterators=synthetic_iterators,
                    progress=False,
                    devices=ONE)
    assert summary["status"] == "done" and summary["start_step"] == 5
    _assert_same_run(reference_run, tmp_path)


def test_restore_refuses_a_different_layout(tmp_path):
    train(tiny_config(steps=1), str(tmp_path), iterators=synthetic_iterators, progress=False,
                    devices=ONE)
    other = tiny_config(steps=2)
    other.model.overrides.vocab_size = 640
    other.model.param_dtype = "bfloat16"
    with pytest.raises(ValueError) as e:
        train(other, str(tmp_path), iterators=synthetic_iterators, progress=False,
                    devices=ONE)
    msg = str(e.value)
    assert "model.vocab_size: checkpoint 512, run 640" in msg
    assert "model.param_dtype: checkpoint 'float32', run 'bfloat16'" in msg
    assert "param model/embed_tokens/embedding" in msg
