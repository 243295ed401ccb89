"""A whole run under faults: run A trains the demo pipeline over a corpus with a corrupt record
mid-stream (data.on_bad_record=skip); run B is the same plus a checkpoint save that fails once, a
crash mid-run, and its newest checkpoint truncated before the restart. B finishes and logs the
same loss at every step as A; its report lists the replaced record and the skipped checkpoint."""

import json
import shutil
from pathlib import Path

import jax
import pytest
from train_fixtures import tiny_config

from marco_jax.checkpoint.run import RunCheckpointer
from marco_jax.data import pipeline
from marco_jax.train.loop import train

SAMPLE = Path(__file__).resolve().parents[1] / "marco_jax" / "sample_data" / "web"
STEPS = 8


def _corpus(root: Path) -> Path:
    (root / "web").mkdir(parents=True)
    for lang in ("en", "de"):
        lines = (SAMPLE / f"{lang}.jsonl").read_text("utf-8").splitlines()
        if lang == "en":
            lines.insert(5, '{"text": "broken')  # malformed JSON mid-stream
        (root / "web" / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return root


def _config(corpus: Path):
    c = tiny_config(STEPS)
    c.model.overrides.vocab_size = 151936  # the real tokenizer's ids
    c.data.mixture, c.data.sources_dir, c.data.on_bad_record = "demo", str(corpus), "skip"
    c.data.seq_len, c.data.global_batch_size = 32, 4
    c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 2, 5, False
    return c


class Crash(RuntimeError):
    pass


def _losses(workdir: Path) -> dict[int, set[float]]:
    out: dict[int, set[float]] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.setdefault(rec["step"], set()).add(rec["loss"])
    return out


# Three training runs (~30 s on 2 cores): slow, so the default run stays under 15 minutes;
# CI's slow run keeps it. test_train_resume covers a SIGKILL restart in the default run.
@pytest.mark.slow
def test_faulty_run_equals_the_clean_one(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus")
    one = jax.devices()[:1]
    a = train(_config(corpus), str(tmp_path / "a"), progress=False, devices=one)
    assert a["status"] == "done" and a["report"]["bad_records"]

    original = RunCheckpointer.save
    calls = {"n": 0}

    def fails_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunCheckpointer, "save", fails_once)

    def crashing(config, p, n):
        it = pipeline.make_train_iterator(config, p, n)
        real_next = it.__next__

        def next_or_crash():
            if it.get_state()["step"] == 6:
                raise Crash("killed at step 6")
            return real_next()
        return _Wrap(it, next_or_crash), None

    with pytest.raises(Crash):
        train(_config(corpus), str(tmp_path / "b"), progress=False, devices=one,
              iterators=crashing)
    steps = sorted(int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert steps == [2, 4, 6]  # step 2's failed save was retried synchronously
    newest = tmp_path / "b" / "checkpoints" / "6"
    big = max((p for p in (newest / "params").rglob("d/*") if p.is_file()),
              key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])  # truncated array

    b = train(_config(corpus), str(tmp_path / "b"), progress=False, devices=one)
    assert b["status"] == "done" and b["start_step"] == 4 and b["step"] == STEPS
    ref, got = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, values in got.items():
        assert values == ref[step], (step, values, ref[step])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [s["step"] for s in report["skipped_checkpoints"]] == [6]
    assert report["bad_records"] == a["report"]["bad_records"]
    shutil.rmtree(tmp_path / "corpus")


class _Wrap:
    """The iterator with a crashing `next` (dunder lookup goes through the type)."""

    def __init__(self, it, next_fn):
        self._it, self._next = it, next_fn
        self.source_names = it.source_names

    def __iter__(self):
        return self

    def __next__(self):
        return self._next()

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)

    def bad_records(self):
        return self._it.bad_records()
