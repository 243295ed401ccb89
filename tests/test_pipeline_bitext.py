"""Bitext pipeline: margin scoring math, and an end-to-end Beam run on real Tatoeba pairs mixed
with junk pairs and broken lines."""

import json
import random

import numpy as np
import pytest

from data_pipelines import clean_bitext
from data_pipelines.encoders import NgramEncoder, margin_scores
from data_pipelines.runs import read_jsonl_shards, read_stats


def test_margin_scores_match_bruteforce_reference():
    rng = np.random.default_rng(0)
    n, d, k = 12, 16, 4
    x = rng.normal(size=(n, d))
    y = x + 0.3 * rng.normal(size=(n, d))
    y[3] = rng.normal(size=d)  # one misaligned pair
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    got = margin_scores(x, y, k)
    for i in range(n):
        fwd = sorted((float(x[i] @ y[j]) for j in range(n)), reverse=True)[:k]
        bwd = sorted((float(y[i] @ x[j]) for j in range(n)), reverse=True)[:k]
        ref = float(x[i] @ y[i]) / (sum(fwd) / (2 * k) + sum(bwd) / (2 * k))
        assert got[i] == pytest.approx(ref, rel=1e-5)
    assert got[3] == min(got) and got[3] < 1.0 < np.median(got)


def test_ngram_encoder_is_normalised_and_lexical():
    e = NgramEncoder().encode(["Berlin is big", "Berlin ist groß", "完全不同的句子"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert e[0] @ e[1] > e[0] @ e[2]


def _tatoeba(shared, pair_dir, src_ext, tgt_ext, n, rng):
    base = shared / "bitext" / "tatoeba" / pair_dir / "tatoeba-test-v2021-08-07"
    src = (base.parent / f"{base.name}.{src_ext}").read_text(encoding="utf-8").splitlines()
    tgt = (base.parent / f"{base.name}.{tgt_ext}").read_text(encoding="utf-8").splitlines()
    idx = rng.sample(range(len(src)), n)
    return [(src[i], tgt[i]) for i in idx]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("bitext")
    recs = []

    def add(src, tgt, sl, tl, kind):
        recs.append({"id": f"{kind}-{len(recs)}", "src": src, "tgt": tgt, "src_lang": sl,
                     "tgt_lang": tl, "gold": kind})

    de = _tatoeba(shared_data, "deu-eng", "eng", "deu", 40, rng)
    zh = _tatoeba(shared_data, "eng-cmn_Hans", "eng", "cmn_Hans", 25, rng)
    for s, t in de:
        add(s, t, "en", "de", "good")
    for s, t in zh:
        add(s, t, "en", "zh", "good")
    for s, t in de[:4]:
        add(s, s, "en", "de", "copy")  # untranslated: target is the source
        add(t, s, "en", "de", "swapped")  # sides in the wrong languages
        add(s, " ".join(t2 for _, t2 in de[:8]), "en", "de", "length_ratio")
        add(s, t, "en", "de", "duplicate")
    add("   ", "Hallo", "en", "de", "empty")
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in recs]
    lines += [b'{"src": "a", "tgt": "b"}', b"not json", b'{"src": "x", "tgt": 3, '
              b'"src_lang": "en", "tgt_lang": "de"}']
    rng.shuffle(lines)
    (root / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = root / "out"
    report = clean_bitext.main(["--input", str(root / "in.jsonl"), "--output", str(out),
                                "--pairs", "en-de,en-zh", "--encoder", "ngram",
                                "--min_margin", "0.0", "--token_counter", "qwen2",
                                "--num_shards", "1"])
    kept = read_jsonl_shards(str(out / "en-*" / "part-*.jsonl"))
    rejected = read_jsonl_shards(str(out / "rejected" / "part-*.jsonl"))
    return dict(recs=recs, n=len(lines), out=out, report=report, kept=kept, rejected=rejected)


def test_bitext_accounting_and_reasons(run):
    rep = run["report"]
    assert rep["inputs"] == run["n"] == rep["kept"] + rep["rejected"] + rep["malformed"]
    assert rep["malformed"] == 3
    gold = {r["id"]: r["gold"] for r in run["recs"]}
    fate = {r["id"]: (r["step"], r["reason"]) for r in run["rejected"] if r["step"] != "parse"}
    for rid, kind in gold.items():
        if kind == "copy":
            assert fate[rid][0] in ("lid", "copy"), fate.get(rid)
        elif kind == "swapped":
            assert fate[rid] == ("lid", "src_wrong_language")
        elif kind == "length_ratio":
            assert fate[rid] == ("length", "length_ratio")
        elif kind == "empty":
            assert fate[rid] == ("normalize", "empty_side")
    dups = [r for r in run["rejected"] if r["reason"] == "duplicate_pair"]
    assert len(dups) == 4
    good_kept = sum(gold[k["id"]] in ("good", "duplicate") for k in run["kept"])
    assert good_kept >= 0.85 * sum(v == "good" for v in gold.values())


def test_bitext_shards_contract(run):
    import tensorflow as tf

    stats = read_stats(str(run["out"]))
    assert stats["documents"] == len(run["kept"])
    for pair in ("en-de", "en-zh"):
        (shard,) = (run["out"] / pair).glob("part-00000-of-00001.tfrecord")
        ex = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset([shard])]
        assert len(ex) == stats["by_language"][pair]["documents"]
        f = ex[0].features.feature
        assert f["src_lang"].bytes_list.value[0].decode() == pair.split("-")[0]
        assert f["tgt_lang"].bytes_list.value[0].decode() == pair.split("-")[1]
        assert len(f["score"].float_list.value) == 1
    for k in run["kept"]:
        assert set(k) == {"src", "tgt", "src_lang", "tgt_lang", "score", "id"}


def test_bad_pairs_and_non_empty_output_are_one_line_exit_2(tmp_path, capsys):
    """An unknown language in --pairs (was: a silent run that rejected everything) and a
    non-empty --output (was: new shards beside stale ones) are refused in one line."""
    raw = tmp_path / "in.jsonl"
    raw.write_text(json.dumps({"src": "Good morning, my friend.", "tgt": "Guten Morgen, mein "
                               "Freund.", "src_lang": "en", "tgt_lang": "de"}) + "\n")
    with pytest.raises(SystemExit) as e:
        clean_bitext.main(["--input", str(raw), "--output", str(tmp_path / "o"),
                           "--pairs", "en-xx"])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--pairs" in line and "'xx'" in line
    out = tmp_path / "o"
    out.mkdir()
    (out / "en-de").mkdir()
    (out / "en-de" / "part-00000-of-00001.jsonl").write_text("stale\n")
    with pytest.raises(SystemExit) as e:
        clean_bitext.main(["--input", str(raw), "--output", str(out), "--pairs", "en-de",
                           "--token_counter", "whitespace"])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(out) in line and "--overwrite" in line
    report = clean_bitext.main(["--input", str(raw), "--output", str(out), "--pairs", "en-de",
                                "--token_counter", "whitespace", "--overwrite"])
    shards = read_jsonl_shards(str(out / "en-de" / "part-*.jsonl"))
    assert [s["src"] for s in shards] == ["Good morning, my friend."] and report["kept"] == 1
    # whitespace tokens of both sides: 4 + 4
    assert read_stats(str(out))["by_language"] == {"en-de": {"documents": 1, "tokens": 8}}
