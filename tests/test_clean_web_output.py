"""clean_web's output directory (issue 12 item 4): a non-empty --output is refused unless
--overwrite, the run is committed only when it succeeded (no stale shards beside new ones, no
staging directories left), stats.json lists exactly the shard folders, bad --languages / --input
are one line with exit status 2, and the output is read by the training iterator directly even
when a language kept no document."""

import json
from pathlib import Path

import pytest

import marco_jax
from data_pipelines import clean_web
from data_pipelines.runs import read_jsonl_shards
from marco_jax.data.pipeline import make_train_iterator
from marco_jax.data.tokenizer import get_tokenizer

SAMPLE_WEB = Path(marco_jax.__file__).parent / "sample_data" / "web"
FAST = ["--token_counter", "whitespace", "--num_shards", "1", "--direct_num_workers", "1"]


def _raw(path: Path, langs=("en", "fr")) -> Path:
    """Genuine documents of the package's sample corpus (each passes the quality filters)."""
    path.write_text("".join((SAMPLE_WEB / f"{lang}.jsonl").read_text("utf-8") for lang in langs),
                    "utf-8")
    return path


def _documents(*langs: str) -> int:
    """Documents of the sample corpus in `langs` (every one passes the filters)."""
    return sum(len((SAMPLE_WEB / f"{lang}.jsonl").read_text("utf-8").splitlines())
               for lang in langs)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_unknown_language_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        clean_web.main(["--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                        "--languages", "en,xx"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert "--languages" in line and "'xx'" in line and "ISO 639-1" in line


def test_input_matching_nothing_is_one_line_and_leaves_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        clean_web.main(["--input", str(tmp_path / "raw" / "*.jsonl"), "--output",
                        str(tmp_path / "out"), "--languages", "en", *FAST])
    assert e.value.code == 2
    assert "no files match" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # no output, no staging or Beam temp directories


def test_non_empty_output_refused_then_replaced_whole_with_overwrite(tmp_path, capsys):
    raw = _raw(tmp_path / "raw.jsonl")
    out = tmp_path / "out"
    clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en,fr,de", *FAST])
    first = _files(out)
    assert {"de/part-00000-of-00001.jsonl", "fr/part-00000-of-00001.jsonl"} <= first
    capsys.readouterr()

    # a second run with other languages: refused, and the first run's files are untouched
    with pytest.raises(SystemExit) as e:
        clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en", *FAST])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert _files(out) == first

    # with --overwrite: only the new run's shards (no stale fr/ or de/ beside them)
    report = clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en",
                             "--overwrite", *FAST])
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == {"en", "rejected"}
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["by_language"]) == {"en"}
    kept = read_jsonl_shards(str(out / "en" / "part-*.jsonl"))
    assert stats["documents"] == stats["by_language"]["en"]["documents"] == len(kept) == \
        report["kept"] == _documents("en")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.jsonl"]  # no staging


def test_failed_run_keeps_the_old_output_and_leaves_no_staging(tmp_path):
    raw = _raw(tmp_path / "raw.jsonl", ("en",))
    out = tmp_path / "out"
    clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en", *FAST])
    before = {f: (out / f).read_bytes() for f in _files(out)}
    # the perplexity scorer cannot load (no kenlm package or no model): the run fails on a worker
    with pytest.raises(Exception, match="kenlm|no_model"):
        clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en",
                        "--overwrite", "--perplexity_model", f"kenlm:{tmp_path / 'no_model'}",
                        "--max_perplexity", "100", *FAST])
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.jsonl"]


def test_output_with_an_empty_language_feeds_training_directly(tmp_path):
    """--languages en,fr,ja over en + fr documents: ja keeps 0 documents. The output, written as
    ROOT/web, is the training iterator's sources_dir as it is: batches come from en and fr, ja is
    left out (its shards are empty), and stats.json says ja has 0 documents."""
    from train_fixtures import tiny_config

    raw = _raw(tmp_path / "raw.jsonl")
    root = tmp_path / "sources"
    report = clean_web.main(["--input", str(raw), "--output", str(root / "web"),
                             "--languages", "en,fr,ja", *FAST])
    stats = json.loads((root / "web" / "stats.json").read_text())
    assert stats["by_language"]["ja"] == {"documents": 0, "tokens": 0}
    assert stats["by_language"]["en"]["documents"] + stats["by_language"]["fr"][
        "documents"] == report["kept"] == stats["documents"] == _documents("en", "fr")
    assert read_jsonl_shards(str(root / "web" / "ja" / "part-*.jsonl")) == []

    config = tiny_config()
    config.data.sources_dir = str(root)
    config.data.mixture = "demo"
    config.data.seq_len, config.data.global_batch_size = 64, 4
    config.model.overrides.vocab_size = 151936  # real token ids come out of the iterator
    it = make_train_iterator(config, 0, 1, prefetch=0)
    assert sorted(it.source_names) == ["web.en", "web.fr"]
    texts = {d["text"] for d in read_jsonl_shards(str(root / "web" / "*" / "part-*.jsonl"))}
    tok, seen = get_tokenizer(), set()
    for _ in range(4):
        batch = next(it)
        assert batch["tokens"].shape == (4, 64)
        seen |= {int(s) for s in batch["source_ids"].ravel() if s >= 0}
        # the first 16 tokens of the first row are text of one of the cleaned documents
        row, seg = batch["tokens"][0], batch["segment_ids"][0]
        first = tok.decode(row[(seg == 1)][:16].tolist())
        assert any(first in t for t in texts), first
    assert seen == {0, 1}  # both languages feed the batches
