"""A run's checkpoints: params-only reads never touch the optimizer state; a corrupt newest step
is set aside (kept, renamed) and the newest readable one is resumed, reported in report.json,
with one warning line on stderr (no tracebacks of the reads Orbax abandoned); a
failed save is retried once synchronously, and a save that keeps failing stops the run."""

import gc
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_fixtures import synthetic_iterators, tiny_config

from marco_jax.checkpoint import load_model, load_params
from marco_jax.checkpoint.run import RunCheckpointer, _discard_abandoned_reads
from marco_jax.train.hooks import CheckpointSaveFailed
from marco_jax.train.loop import train

ONE = jax.devices()[:1]
TESTS = Path(__file__).resolve().parent


def _train(cfg, workdir):
    return train(cfg, str(workdir), iterators=synthetic_iterators, progress=False, devices=ONE)


def _losses(workdir):
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    """A 4-step run saving steps 2 and 4 (synchronously, so files are final)."""
    workdir = tmp_path_factory.mktemp("run4") / "run"
    cfg = tiny_config(steps=4)
    cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.async_save = 2, 3, False
    _train(cfg, workdir)
    return workdir


def test_params_only_reads_never_touch_the_optimizer_state(run4, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(run4, workdir)
    want = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "4" / "params")
    shutil.rmtree(workdir / "checkpoints" / "4" / "opt_state")  # no moments to read at all
    config, params = load_params(workdir)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert config.num_hidden_layers == 2
    assert load_model(workdir, step=2).config.vocab_size == 512
    # a new stage starts from it (train.init_from = a workdir), optimizer afresh
    cfg = tiny_config(steps=1)
    cfg.optim.peak_lr, cfg.optim.warmup_steps = 0.0, 0
    cfg.train.init_from = str(workdir)
    _train(cfg, tmp_path / "stage2")
    got = ocp.StandardCheckpointer().restore(tmp_path / "stage2" / "checkpoints" / "1" / "params")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["missing_data_file", "truncated_array", "missing_meta_item"])
def test_corrupt_newest_step_is_set_aside_and_the_run_resumes_from_the_previous(
        run4, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(run4, workdir)
    step4 = workdir / "checkpoints" / "4"
    data_files = sorted((p for p in (step4 / "params").rglob("d/*") if p.is_file()),
                        key=lambda p: p.stat().st_size)
    if damage == "missing_data_file":
        data_files[-1].unlink()
    elif damage == "truncated_array":
        big = data_files[-1]
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    else:
        shutil.rmtree(step4 / "meta")
    cfg = tiny_config(steps=6)
    cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.async_save = 2, 3, False
    summary = _train(cfg, workdir)
    assert summary["start_step"] == 2 and summary["step"] == 6
    report = json.loads((workdir / "report.json").read_text())
    assert [s["step"] for s in report["skipped_checkpoints"]] == [4]
    kept = list((workdir / "checkpoints").glob("4.unreadable-*"))
    assert len(kept) == 1  # never deleted
    # the recomputed steps 3 and 4 equal the original run's
    ref, got = _losses(run4), _losses(workdir)
    assert got[3] == ref[3] and got[4] == ref[4]


def test_abandoned_reads_are_collected_at_once_and_quietly():
    """The mechanism behind the test below, deterministic: a read suspended at its await and
    left in a reference cycle (only the garbage collector frees it) whose close raises, as
    Orbax's abandoned shard reads do, is gone after `_discard_abandoned_reads`, unreported."""

    class Pending:
        def __await__(self):
            yield

    async def read():
        try:
            await Pending()
        except GeneratorExit as e:
            raise RuntimeError("read abandoned") from e

    coroutine = read()
    coroutine.send(None)  # suspended inside its await
    alive = weakref.ref(coroutine)
    cycle = [coroutine]
    cycle.append(cycle)
    del coroutine, cycle
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        _discard_abandoned_reads()
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert alive() is None and not unraisable, unraisable


RESUME = """
import sys
import jax
from train_fixtures import synthetic_iterators, tiny_config
from marco_jax.train.loop import train
cfg = tiny_config(steps=6)
cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.async_save = 2, 3, False
train(cfg, sys.argv[1], iterators=synthetic_iterators, progress=False, devices=jax.devices()[:1])
"""


def test_a_set_aside_step_costs_one_warning_line_and_no_tracebacks(run4, tmp_path):
    """Orbax abandons the other shard reads when one fails; closed by the garbage collector at
    some later moment, each printed an ignored exception's traceback (a ~60-line TensorStore spec)
    on stderr. Only visible in a fresh process (under pytest they are collected at other times),
    and not in every run: without the fix 1 of 6 runs of this resume printed them (3), another
    run earlier 17; none with it (0 of 7)."""
    workdir = tmp_path / "run"
    shutil.copytree(run4, workdir)
    data_files = sorted((p for p in (workdir / "checkpoints" / "4" / "params").rglob("d/*")
                         if p.is_file()), key=lambda p: p.stat().st_size)
    data_files[-1].unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    done = subprocess.run([sys.executable, "-c", RESUME, str(workdir)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint step 4 is unreadable" in done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_failed_save_is_retried_once_and_a_persistent_failure_stops_the_run(
        tmp_path, monkeypatch):
    original = RunCheckpointer.save
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunCheckpointer, "save", flaky)
    cfg = tiny_config(steps=4)
    cfg.checkpoint.every, cfg.checkpoint.keep = 2, 3
    summary = _train(cfg, tmp_path / "flaky")
    assert summary["status"] == "done"
    retries = summary["report"]["checkpoint_retries"]
    assert [r["step"] for r in retries] == [2] and "No space left" in retries[0]["error"]
    assert sorted(p.name for p in (tmp_path / "flaky" / "checkpoints").iterdir()) == ["2", "4"]

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunCheckpointer, "save", broken)
    with pytest.raises(CheckpointSaveFailed, match="retry at step 2 failed too"):
        _train(cfg, tmp_path / "broken")
    report = json.loads((tmp_path / "broken" / "report.json").read_text())
    assert report["status"] == "stopped: checkpoint save failed"
