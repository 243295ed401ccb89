"""Bad records (data.on_bad_record), tasks with zero records, and prefetch: a corrupt line
mid-corpus is an error naming file and record, or (skip) is replaced deterministically and
counted; an empty language is left out; prefetch changes no batch and resume stays exact."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from marco_jax.data.packing import FIELDS
from marco_jax.data.pipeline import make_train_iterator, resolve_plan
from marco_jax.data.tasks import SAMPLE_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARES = {"english": 0.5, "chinese": 0.5, "high_resource": 0.0, "low_resource": 0.0,
          "parallel": 0.0, "knowledge": 0.0, "synthetic": 0.0}


def _write(path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def corrupt(tmp_path):
    """web.en: 30 good documents with a malformed JSON line (record 7) and an invalid-UTF-8 line
    (record 12) in the middle; web.zh: clean."""
    good = [json.dumps({"text": f"English document number {i}. " * (1 + i % 5)}).encode()
            for i in range(30)]
    lines = good[:7] + [b'{"text": "unterminated}'] + good[7:11] + [b'{"text": "caf\xe9"}'] + \
        good[11:]
    _write(tmp_path / "web" / "en.jsonl", lines)
    _write(tmp_path / "web" / "zh.jsonl", [json.dumps({"text": f"中文文档 {i}。" * 3},
                                                      ensure_ascii=False).encode()
                                           for i in range(20)])
    return tmp_path


def cfg(root, **data):
    base = dict(mixture="demo", sources_dir=str(root), shares=SHARES, seq_len=32,
                global_batch_size=4, seed=3, packing_lookahead=2, prefetch=0)
    return {"data": base | data}


def run(it, steps: int) -> list[str]:
    out = []
    for _ in range(steps):
        b = next(it)
        out.append(hashlib.sha256(b"".join(np.ascontiguousarray(b[k]).tobytes()
                                           for k in FIELDS)).hexdigest())
    return out


def test_bad_record_error_names_file_and_record(corrupt):
    it = make_train_iterator(cfg(corrupt), 0, 1)
    with pytest.raises(ValueError) as err:
        run(it, 40)
    msg = str(err.value)
    assert "en.jsonl: record 7 (line 8): invalid JSON" in msg or \
        "en.jsonl: record 12 (line 13): invalid UTF-8" in msg, msg
    assert "on_bad_record=skip" in msg


def test_invalid_utf8_error_keeps_file_and_record(corrupt):
    plan = resolve_plan(cfg(corrupt))
    src = plan.tasks[plan.names.index("web.en")].source
    with pytest.raises(ValueError, match=r"en.jsonl: record 12 \(line 13\): invalid UTF-8 at "
                                         r"byte 13"):
        src[12]


def test_skip_replaces_counts_and_resumes_exactly(corrupt):
    full = make_train_iterator(cfg(corrupt, on_bad_record="skip", prefetch=2), 0, 1)
    hashes, state = [], None
    for step in range(60):
        if step == 25:
            state = full.get_state()
        hashes += run(full, 1)
    counts = full.bad_records()
    # 30 documents of web.en read over and over: both bad ones replaced, counted per reason.
    assert set(counts) == {"web.en"} and set(counts["web.en"]) == {"invalid_json",
                                                                   "invalid_utf8"}
    assert full.get_state()["bad_records"] == counts
    # Every replacement of a bad record is the next good one: no bad text ever reaches a batch.
    resumed = make_train_iterator(cfg(corrupt, on_bad_record="skip", prefetch=2), 0, 1)
    resumed.set_state(state)
    assert run(resumed, 35) == hashes[25:]
    assert resumed.bad_records() == counts  # counts survive the restore
    two = [make_train_iterator(cfg(corrupt, on_bad_record="skip"), h, 2) for h in range(2)]
    for it in two:
        it.set_state(state)
    for step in range(10):
        parts = [next(it) for it in two]
        merged = hashlib.sha256(b"".join(np.ascontiguousarray(
            np.concatenate([p[k] for p in parts])).tobytes() for k in FIELDS)).hexdigest()
        assert merged == hashes[25 + step]


def test_skip_stream_equals_the_corpus_without_the_bad_lines_replaced(corrupt, tmp_path):
    """Independent reference: the same corpus with each bad line replaced by a copy of the next
    good line gives exactly the same batches (the replacement rule, written out by hand)."""
    lines = (corrupt / "web" / "en.jsonl").read_bytes().split(b"\n")[:-1]
    fixed = list(lines)
    fixed[7], fixed[12] = lines[8], lines[13]
    ref = tmp_path / "ref"
    _write(ref / "web" / "en.jsonl", fixed)
    shutil.copy(corrupt / "web" / "zh.jsonl", ref / "web" / "zh.jsonl")
    got = run(make_train_iterator(cfg(corrupt, on_bad_record="skip"), 0, 1), 30)
    want = run(make_train_iterator(cfg(ref), 0, 1), 30)
    assert got == want


def test_prefetch_changes_no_batch(corrupt):
    plain = run(make_train_iterator(cfg(corrupt, on_bad_record="skip"), 0, 1), 30)
    ahead = make_train_iterator(cfg(corrupt, on_bad_record="skip", prefetch=3), 0, 1)
    assert run(ahead, 30) == plain
    deadline = time.monotonic() + 10
    while ahead.inner.step <= 30 and time.monotonic() < deadline:
        time.sleep(0.01)  # the producer runs ahead in its thread
    assert ahead.inner.step > 30
    assert ahead.get_state()["step"] == 30  # the consumed position, not the produced one


def test_empty_language_is_left_out(tmp_path):
    """A language whose source has zero records (data_pipelines kept no documents) is left out
    when its group keeps another task; a group left with none is one clear error."""
    root = tmp_path / "src"
    shutil.copytree(SAMPLE_DATA_DIR, root)
    (root / "web" / "de.jsonl").write_text("")  # a high-resource language with no documents
    shares = dict.fromkeys(SHARES, 0.0) | {"english": 0.5, "high_resource": 0.5}
    plan = resolve_plan({"data": dict(mixture="marco_stage1", sources_dir=str(root),
                                      shares=shares, pool_sizes="sources")})
    assert plan.empty == ["web.de"] and "web.de" not in plan.names
    assert plan.group_shares["high_resource"] == pytest.approx(0.5)
    # data_pipelines' layout: no shard at all for a language that kept nothing, and its
    # web/stats.json says so (absent from by_language, or 0 documents).
    (root / "web" / "fr.jsonl").unlink()
    (root / "web" / "es.jsonl").unlink()
    langs = [p.stem for p in (root / "web").glob("*.jsonl")]
    stats = json.dumps({"documents": 99, "tokens": 9999, "by_language": {
        x: {"documents": 3, "tokens": 300} for x in langs} | {"es": {"documents": 0}}})
    (root / "web" / "stats.json").write_text(stats)
    plan = resolve_plan({"data": dict(mixture="marco_stage1", sources_dir=str(root),
                                      shares=shares, pool_sizes="sources")})
    assert sorted(plan.empty) == ["web.de", "web.es", "web.fr"]
    assert not {"web.de", "web.es", "web.fr"} & set(plan.names)
    (root / "web" / "stats.json").unlink()  # without stats, a missing shard is a missing source
    with pytest.raises(FileNotFoundError, match=r"no source for 2 task\(s\) \['web.es', 'web.f"):
        resolve_plan({"data": dict(mixture="marco_stage1", sources_dir=str(root),
                                   shares=shares, pool_sizes="sources")})
    (root / "web" / "stats.json").write_text(stats)
    (root / "web" / "en.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"group 'english' .* \(web.en: zero records\)"):
        resolve_plan({"data": dict(mixture="marco_stage1", sources_dir=str(root),
                                   shares=shares, pool_sizes="sources")})


def _inspect(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "marco_jax.data.inspect", "--config",
                           str(ROOT / "configs" / "base.py"), *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def test_inspect_cli_bad_mixture_and_empty_count(tmp_path):
    bad = _inspect("--config.data.mixture=nope", "--examples", "10")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: data.mixture='nope': neither one of our mixtures (demo, marco_stage1, "
        "marco_stage2, sft), nor one of our tasks, nor a registered seqio Task or Mixture "
        "(register yours in a module named by data.modules)"]
    root = tmp_path / "src"
    shutil.copytree(SAMPLE_DATA_DIR, root)
    (root / "web" / "de.jsonl").write_text("")
    ok = _inspect(f"--config.data.sources_dir={root}", "--examples", "200")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "tasks with zero records (left out; their group keeps its share): 1: web.de" in ok.stdout
    # The examples column is a count on every row: a group's is the sum of its tasks', and the
    # groups' add up to the examples the header says were drawn.
    table = ok.stdout.split("group / task", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    groups: dict[str, int] = {}
    members: dict[str, int] = {}
    group = ""
    for line in table:
        fields = line.split()
        if line.startswith("  "):
            members[group] += int(fields[4])
        else:
            group = fields[0]
            groups[group], members[group] = int(fields[4]), 0
    assert groups and groups == members
    drawn = int(re.search(r"realised over (\d+) examples", ok.stdout).group(1))
    assert sum(groups.values()) == drawn
