"""`python -m marco_jax.evaluate` end to end on a tiny converted checkpoint: report files, resume
after a task's result is deleted, the same weights from a HF directory (converted on the fly)
giving the same scores, compare mode, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.evaluate import main

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
CONFIG = """
def get_config():
    return {{
        "data_root": {data_root!r},
        "batch_size": 8, "max_len": 512, "length_buckets": [512],
        "tasks": [
            {{"name": "xcopa", "languages": ["zh", "sw"], "shots": 2}},
            {{"name": "mmmlu", "path": {mmmlu!r}, "languages": ["de"], "shots": 1}},
            {{"name": "flores", "split": "dev", "languages": ["kk"], "shots": 1,
              "max_new_tokens": 6}},
        ],
    }}
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from hf_fixtures import make_hf_model

    root = tmp_path_factory.mktemp("ckpt")
    hf_dir, _ = make_hf_model(root, vocab=151936, hidden=32, heads=4, kv_heads=2, layers=2)
    convert_hf_to_orbax(hf_dir, root / "ours")
    return hf_dir, root / "ours"


@pytest.fixture
def config(tmp_path, shared_data):
    path = tmp_path / "eval_test.py"
    path.write_text(CONFIG.format(data_root=str(shared_data), mmmlu=str(FIXTURES / "mmmlu")))
    return path


def _scores(out: Path) -> dict:
    return {f.stem: json.loads(f.read_text())["scores"] for f in (out / "tasks").glob("*.json")}


def test_evaluate_resume_hf_and_compare(checkpoints, config, tmp_path, capsys):
    hf_dir, ours = checkpoints
    out = tmp_path / "ours_out"
    args = ["--config", str(config), "--limit", "2", "--no-progress"]
    assert main(args + ["--checkpoint", str(ours), "--out", str(out)]) == 0
    for label in ("xcopa", "mmmlu", "flores"):
        result = json.loads((out / "tasks" / f"{label}.json").read_text())
        assert result["limit"] == 2 and all(row["n"] == 2 for row in result["scores"].values())
        assert (out / "plots" / f"{label}.png").stat().st_size > 0
        assert (out / "prompts" / f"{label}.md").read_text().count("```text") >= 1
        lines = (out / "predictions" / f"{label}.jsonl").read_text().splitlines()
        assert len(lines) == result["items"]
    flores = json.loads((out / "tasks" / "flores.json").read_text())
    assert set(flores["groups"]) == {"en->xx", "xx->en"}
    assert set(flores["scores"]["en-kk"]) >= {"bleu", "chrf++"}
    report = (out / "report.md").read_text()
    assert "| xcopa | acc |" in report and "| flores | bleu |" in report
    assert json.loads((out / "report.json").read_text())["headline"][0]["task"] == "xcopa"

    # resume: only the deleted task runs again, and gives the same scores
    before = _scores(out)
    kept = {p: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json") if p.stem != "xcopa"}
    (out / "tasks" / "xcopa.json").unlink()
    capsys.readouterr()
    assert main(args + ["--checkpoint", str(ours), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mmmlu: already written, skipped" in printed
    assert "flores: already written, skipped" in printed
    assert "xcopa: 4 items in 2 subsets" in printed
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert _scores(out) == before

    # the HF directory of the same weights, converted on the fly: identical scores
    hf_out = tmp_path / "hf_out"
    assert main(args + ["--checkpoint", str(hf_dir), "--out", str(hf_out), "--name", "hf",
                        "--tasks", "xcopa,flores"]) == 0
    hf_scores = _scores(hf_out)
    assert hf_scores == {k: v for k, v in before.items() if k in ("xcopa", "flores")}

    # another checkpoint into the same --out is refused
    assert main(args + ["--checkpoint", str(hf_dir), "--out", str(out)]) == 2

    cmp = tmp_path / "cmp"
    assert main(["compare", str(out), str(hf_out), "--out", str(cmp)]) == 0
    comparison = json.loads((cmp / "comparison.json").read_text())
    assert [t["task"] for t in comparison["tasks"]] == ["xcopa", "flores"]
    assert comparison["not_compared"] == ["mmmlu"]
    for task in comparison["tasks"]:
        assert all(d == 0.0 for row in task["subsets"] for d in row["deltas"])
        assert (cmp / task["plot"]).stat().st_size > 0
    md = (cmp / "comparison.md").read_text()
    assert "| zh |" in md and "+0.00" in md and "Δ hf" in md
    assert (cmp / "plots" / "delta_headline.png").stat().st_size > 0


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_exits_2_with_one_line(checkpoints, config, tmp_path, capsys, monkeypatch):
    _, ours = checkpoints
    monkeypatch.chdir(tmp_path)  # the default --out is relative to the working directory
    err = _one_line_error(capsys, ["--config", str(config), "--checkpoint",
                                   str(tmp_path / "nope")])
    assert "nope: not a converted checkpoint" in err
    err = _one_line_error(capsys, ["--config", str(config), "--checkpoint", str(ours),
                                   "--tasks", "xcopa,belebel"])
    assert "unknown task 'belebel'" in err
    err = _one_line_error(capsys, ["--config", str(config), "--checkpoint", str(ours),
                                   "--step", "3"])
    assert "--step needs a training workdir" in err
    assert not (tmp_path / "eval_results").exists()  # refused before writing anything
    err = _one_line_error(capsys, ["--config", str(tmp_path / "missing.py"), "--checkpoint",
                                   str(ours)])
    assert "missing.py: no such file" in err

    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text("def get_config():\n    return {'tasks': [{'name': 'xcopa'}], "
                       "'batch_sise': 4}\n")
    assert "unknown suite config key 'batch_sise'" in _one_line_error(
        capsys, ["--config", str(bad_key), "--checkpoint", str(ours)])
    bad_task = tmp_path / "bad_task.py"
    bad_task.write_text("def get_config():\n    return {'tasks': [{'name': 'xcopa'}, "
                        "{'name': 'floers'}]}\n")
    assert "tasks[1]: unknown task 'floers'" in _one_line_error(
        capsys, ["--config", str(bad_task), "--checkpoint", str(ours)])
    bad_option = tmp_path / "bad_option.py"
    bad_option.write_text("def get_config():\n    return {'tasks': [{'name': 'xcopa', "
                          "'shot': 3}]}\n")
    assert "tasks[0] (xcopa): unknown key 'shot'" in _one_line_error(
        capsys, ["--config", str(bad_option), "--checkpoint", str(ours)])
    missing_data = tmp_path / "missing_data.py"
    missing_data.write_text(f"def get_config():\n    return {{'data_root': '{tmp_path}', "
                            "'tasks': [{'name': 'xcopa', 'languages': ['zh']}]}\n")
    assert "not found" in _one_line_error(
        capsys, ["--config", str(missing_data), "--checkpoint", str(ours),
                 "--out", str(tmp_path / "o")])
    assert "not an evaluation output" in _one_line_error(
        capsys, ["compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "c")])


@pytest.mark.slow  # trains a 2-step run first (~50 s on 2 cores)
def test_training_workdir_step(tmp_path, config, capsys):
    """--checkpoint a run's workdir (+ --step) scores what that step's exported params score."""
    import jax
    from train_fixtures import synthetic_iterators, tiny_config

    from marco_jax.convert.from_run import export_run_to_orbax
    from marco_jax.train.loop import train

    workdir = tmp_path / "run"
    cfg = tiny_config(steps=2)
    o = cfg.model.overrides
    o.vocab_size, o.hidden_size, o.intermediate_size = 151936, 32, 72
    o.num_attention_heads, o.num_key_value_heads = 4, 2
    cfg.data.seq_len, cfg.data.global_batch_size, cfg.train.loss_chunk = 16, 2, 16
    cfg.checkpoint.every, cfg.checkpoint.async_save = 1, False
    train(cfg, str(workdir), iterators=synthetic_iterators, progress=False,
          devices=jax.devices()[:1])
    export_run_to_orbax(workdir, tmp_path / "step1", step=1)
    args = ["--config", str(config), "--limit", "2", "--no-progress", "--tasks", "xcopa"]
    assert main(args + ["--checkpoint", str(workdir), "--step", "1",
                        "--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--checkpoint", str(tmp_path / "step1"),
                        "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["step"] == 1 and meta["checkpoint_kind"] == "run" and meta["name"] == "run@1"
    assert main(args + ["--checkpoint", str(workdir), "--out", str(tmp_path / "latest")]) == 0
    assert json.loads((tmp_path / "latest" / "meta.json").read_text())["step"] is None

    def logprobs(out: str) -> list:
        lines = (tmp_path / out / "predictions" / "xcopa.jsonl").read_text().splitlines()
        return [json.loads(line)["logprobs"] for line in lines]

    assert _scores(tmp_path / "a") == _scores(tmp_path / "b")
    assert logprobs("a") == logprobs("b")
    assert logprobs("a") != logprobs("latest")  # step 2 is another model
    assert "no step 7" in _one_line_error(
        capsys, args + ["--checkpoint", str(workdir), "--step", "7", "--out",
                        str(tmp_path / "c")])


def _write_run(directory: Path, name: str, xcopa: dict[str, float], any2any: dict[str, float]):
    from marco_jax.evals.suite import group_averages

    def result(label, metric, grouping, values):
        scores = {k: {"language": k, "n": 10, metric: v} for k, v in values.items()}
        return {"label": label, "task": label, "primary_metric": metric, "grouping": grouping,
                "settings": {"shots": 1}, "items": 10 * len(values), "scores": scores,
                "average": {metric: sum(values.values()) / len(values)},
                "groups": group_averages({"grouping": grouping}, scores, [metric])}

    (directory / "tasks").mkdir(parents=True)
    (directory / "meta.json").write_text(json.dumps({"name": name, "checkpoint": name}))
    for r in (result("xcopa", "acc", "language", xcopa),
              result("flores_any", "bleu", "direction", any2any)):
        (directory / "tasks" / f"{r['label']}.json").write_text(json.dumps(r))


def test_compare_three_runs_by_hand(tmp_path, capsys):
    """Deltas against the first run, the paper's groups, the any-to-any heatmap matrix."""
    from marco_jax.evals.report import direction_matrix, write_report

    runs = {"base": ({"zh": 50.0, "sw": 60.0}, {"de-en": 30.0, "en-de": 20.0, "de-zh": 10.0}),
            "cpt": ({"zh": 55.0, "sw": 58.0}, {"de-en": 33.0, "en-de": 26.0, "de-zh": 12.0}),
            "sft": ({"zh": 61.0, "sw": 70.0}, {"de-en": 29.0, "en-de": 21.0, "de-zh": 16.0})}
    for name, (xcopa, any2any) in runs.items():
        _write_run(tmp_path / name, name, xcopa, any2any)
    report = write_report(tmp_path / "cpt")
    headline = {row["task"]: row for row in report["headline"]}
    tasks = {r["label"]: r for r in report["tasks"]}
    groups = headline["flores_any"]["groups"]
    assert groups == {"en->xx": 26.0, "xx->en": 33.0, "xx->yy": 12.0}
    assert (tmp_path / "cpt" / "plots" / "flores_any_heatmap.png").stat().st_size > 0
    langs, matrix = direction_matrix(tasks["flores_any"], "bleu")
    assert langs == ["de", "en", "zh"]
    assert matrix[0, 1] == 33.0 and matrix[1, 0] == 26.0 and matrix[0, 2] == 12.0
    assert np.isnan(matrix[2, 0])
    md = (tmp_path / "cpt" / "report.md").read_text()
    assert "| language | xcopa |" in md and "| zh | 55.00 |" in md and "| sw | 58.00 |" in md
    assert "| *en->xx* (1) | | *26.00* |" in md

    assert main(["compare", *(str(tmp_path / n) for n in runs), "--out",
                 str(tmp_path / "cmp")]) == 0
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    by_task = {t["task"]: t for t in comparison["tasks"]}
    xcopa = by_task["xcopa"]
    assert xcopa["subsets"][0] == {"subset": "zh", "values": [50.0, 55.0, 61.0],
                                   "deltas": [5.0, 11.0]}
    assert xcopa["average"] == {"values": [55.0, 56.5, 65.5], "deltas": [1.5, 10.5]}
    flores = by_task["flores_any"]
    assert flores["groups"]["en->xx"] == {"values": [20.0, 26.0, 21.0], "deltas": [6.0, 1.0]}
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| zh | 50.00 | 55.00 | 61.00 | +5.00 | +11.00 |" in md
    assert "| xcopa | acc | 55.00 | 56.50 | 65.50 | +1.50 | +10.50 |" in md
    assert "compare needs at least two" in _one_line_error(
        capsys, ["compare", str(tmp_path / "base"), "--out", str(tmp_path / "c1")])


FIXTURE_SUITE = """
def get_config():
    return {{
        "data_root": {root!r}, "batch_size": 8, "max_len": 1024, "length_buckets": [512, 1024],
        "tasks": [
            {{"name": "mmmlu", "path": "mmmlu", "languages": ["de", "zh"]}},
            {{"name": "mmlu", "path": "mmlu"}},
            {{"name": "ceval", "path": "ceval"}},
            {{"name": "xstorycloze", "path": "xstorycloze", "languages": ["en", "ru"]}},
            {{"name": "arc", "path": "arc"}},
            {{"name": "belebele", "path": "belebele", "languages": ["zh"]}},
            {{"name": "tydiqa", "path": "tydiqa", "languages": ["sw", "fi"],
              "max_new_tokens": 8}},
            {{"name": "wmt16", "path": "wmt16", "pairs": ["de-en", "ro-en"],
              "max_new_tokens": 8}},
        ],
    }}
"""


@pytest.mark.slow  # every task of the demo suite and of our fixtures through the model (~1 min)
def test_every_task_runs_through_the_suite(checkpoints, shared_data, tmp_path):
    from marco_jax.evals.suite import load_suite_config

    _, ours = checkpoints
    fixture_config = tmp_path / "eval_fixtures.py"
    fixture_config.write_text(FIXTURE_SUITE.format(root=str(FIXTURES)))
    demo = Path(__file__).resolve().parents[1] / "configs" / "eval_demo.py"
    # The demo's data_root is ../shared/data beside the repository; MARCO_SHARED_DATA may differ.
    runs = ((demo, tmp_path / "demo", ["--data-root", str(shared_data)]),
            (fixture_config, tmp_path / "fixtures", []))
    for config, out, extra in runs:
        assert main(["--config", str(config), "--checkpoint", str(ours), "--out", str(out),
                     "--limit", "1", "--no-progress", *extra]) == 0
        labels = [t.label for t in load_suite_config(config).tasks]
        assert sorted(p.stem for p in (out / "tasks").glob("*.json")) == sorted(labels)
        for label in labels:
            result = json.loads((out / "tasks" / f"{label}.json").read_text())
            assert result["scores"] and all(row["n"] == 1 for row in result["scores"].values())
            primary = result["average"][result["primary_metric"]]
            assert 0.0 <= primary <= 100.0


def test_mesh_sharded_suite_equals_one_device(checkpoints, config, tmp_path):
    """With `mesh` (params read into their shards, batch rows over data x fsdp) the per-item
    log-likelihoods equal the one-device run's, and so do the accuracies."""
    _, ours = checkpoints
    sharded = tmp_path / "eval_mesh.py"
    sharded.write_text(config.read_text().replace('"batch_size": 8,',
                                                  '"batch_size": 8, "mesh": {"data": 2, '
                                                  '"fsdp": 2, "tensor": 2},'))
    args = ["--checkpoint", str(ours), "--limit", "3", "--no-progress", "--tasks", "xcopa"]
    assert main(["--config", str(config), "--out", str(tmp_path / "one")] + args) == 0
    assert main(["--config", str(sharded), "--out", str(tmp_path / "mesh")] + args) == 0
    meta = json.loads((tmp_path / "mesh" / "meta.json").read_text())
    assert meta["suite"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}

    def logprobs(out: str) -> np.ndarray:
        lines = (tmp_path / out / "predictions" / "xcopa.jsonl").read_text().splitlines()
        return np.array([json.loads(line)["logprobs"] for line in lines])

    np.testing.assert_allclose(logprobs("mesh"), logprobs("one"), atol=1e-4, rtol=0)
    assert _scores(tmp_path / "mesh") == _scores(tmp_path / "one")
