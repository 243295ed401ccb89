"""Packing, tasks, templates and sources of the input pipeline, on a corpus built from the
genuine multilingual texts in ../shared/data."""

from __future__ import annotations

import collections
import gzip
import json
import math
import re

import ml_collections
import numpy as np
import pytest
from data_corpus import build_corpus

from marco_jax.data import languages as L
from marco_jax.data.pipeline import make_train_iterator, plan_mixture
from marco_jax.data.sources import DocumentSource, read_stats
from marco_jax.data.tasks import TaskSpec, task_catalog
from marco_jax.data.templates import TRANSLATION_TEMPLATES, choose_rendering, render_translation
from marco_jax.data.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return build_corpus(tmp_path_factory.mktemp("corpus"), shared_data)


def data_config(corpus, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        mixture="marco_stage1", seq_len=64, global_batch_size=4, seed=11, temperature=3.0,
        sources_dir=str(corpus), packing_lookahead=4))
    c.data.update(overrides)
    return c


def _segments(batch, r):
    seg = batch["segment_ids"][r]
    for s in range(1, seg.max() + 1):
        idx = np.flatnonzero(seg == s)
        yield s, idx


def test_rows_hold_each_document_exactly_once(corpus):
    it = make_train_iterator(data_config(corpus), 0, 1, prefetch=0)  # inspects the lanes
    tok = get_tokenizer()
    placed = collections.defaultdict(list)  # lane -> list of token sequences (chunk + last target)
    for _ in range(25):
        b = next(it)
        for r in range(4):
            seg = b["segment_ids"][r]
            used = int((seg > 0).sum())
            # Segments fill a prefix, ids 1..k in order, padding after.
            assert (seg[:used] > 0).all() and (seg[used:] == 0).all()
            assert (np.diff(seg[:used]) >= 0).all() and (b["loss_mask"][r, used:] == 0).all()
            assert (b["source_ids"][r, used:] == -1).all()
            for _, idx in _segments(b, r):
                assert (b["positions"][r, idx] == np.arange(len(idx))).all()
                assert (b["tokens"][r, idx[1:]] == b["targets"][r, idx[:-1]]).all()
                assert len(set(b["source_ids"][r, idx].tolist())) == 1
                assert (b["loss_mask"][r, idx] == 1).all()
                placed[r].append((int(b["source_ids"][r, idx[0]]),
                                  b["tokens"][r, idx].tolist() + [int(b["targets"][r, idx[-1]])]))
    # Independently: the documents of every example the lane read, cut into seq_len-target chunks.
    chunked = 0
    for r, lane in enumerate(it.lanes):
        expected = []
        pending = {i: c for i, c in lane.pending}
        for i in range(lane.next_example):
            t, d = it.example(r + 4 * i)
            task = it.plan.tasks[t]
            ids = tok.encode(task.text(task.source[d])) + [tok.eos_id]
            chunks = [ids[k:k + 65] for k in range(0, len(ids) - 1, 64)]
            chunked += len(chunks) > 1
            expected += [(t, ch) for ch in chunks[:pending.get(i, len(chunks))]]
        key = lambda x: (x[0], x[1])
        assert sorted(placed[r], key=key) == sorted(expected, key=key)
    assert it.counters.chunked_documents == chunked > 0
    assert it.counters.empty_documents == 0
    assert it.counters.target_tokens + it.counters.padding_tokens == 25 * 4 * 64


def test_host_rows_partition_the_global_batch(corpus):
    one = make_train_iterator(data_config(corpus), 0, 1)
    two = [make_train_iterator(data_config(corpus), h, 2) for h in range(2)]
    assert one.source_names == two[0].source_names
    for _ in range(6):
        full = next(one)
        halves = [next(x) for x in two]
        for k in full:
            assert halves[0][k].shape == (2, 64)
            np.testing.assert_array_equal(full[k], np.concatenate([h[k] for h in halves]))


def test_sft_loss_mask_is_assistant_only(corpus):
    it = make_train_iterator(data_config(corpus, mixture="sft", seq_len=128), 0, 1)
    assert it.source_names == ["sft.chat"]
    tok = get_tokenizer()
    b = next(it)
    seen = 0
    for r in range(4):
        for _, idx in _segments(b, r):
            mask = b["loss_mask"][r, idx].astype(bool)
            if b["tokens"][r, idx[-1]] != tok.im_end_id:  # a chunk, not a whole conversation
                continue
            trained = tok.decode(b["targets"][r, idx][mask].tolist())
            assert re.fullmatch(r"The answer is [0-9,.]+\.<\|im_end\|>", trained), trained
            assert tok.decode(b["tokens"][r, idx[:1]].tolist()) == "<|im_start|>"
            seen += 1
    assert seen > 0


def test_plan_uses_temperature_within_groups(corpus):
    plan = plan_mixture(data_config(corpus, pool_sizes="sources").data)
    assert set(plan.pool_origin.values()) == {"estimated"}  # the fixture has no stats.json
    low = [t for t in plan.names if plan.groups[t] == "low_resource"]
    z = sum(plan.pools[t] ** (1 / 3) for t in low)
    for t in low:
        assert plan.token_rates[t] == pytest.approx(0.09 * plan.pools[t] ** (1 / 3) / z)


def test_missing_sources_are_an_error_for_stage_mixtures(tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "en.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(FileNotFoundError, match="no source for"):
        plan_mixture(data_config(tmp_path).data)


def test_translation_templates(corpus):
    assert len(TRANSLATION_TEMPLATES) >= 11
    task = task_catalog(str(corpus))["bitext.en_de"]
    used, directions = set(), set()
    for rec in task.source:
        swap, k = choose_rendering("en", "de", rec["src"], rec["tgt"])
        used.add(k)
        directions.add(swap)
        text = task.text(rec)
        assert text == render_translation("en", "de", rec["src"], rec["tgt"])
        assert rec["src"].strip() in text and rec["tgt"].strip() in text
        first, second = ("German", "English") if swap else ("English", "German")
        assert first in text and second in text
    assert directions == {False, True} and len(used) >= 8
    t0 = TRANSLATION_TEMPLATES[1].format(src="Hallo", src_lang="German", tgt="Hello",
                                         tgt_lang="English")
    assert t0 == "The sentence Hallo in German means Hello in English."


def test_sources_jsonl_gz_crlf_blank_and_stats(tmp_path):
    recs = [{"text": f"doc {i} ünïcode"} for i in range(5)]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in recs[:3]) + "\r\n\r\n"
    (tmp_path / "a.jsonl").write_text(body, encoding="utf-8", newline="")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in recs[3:]))
    (tmp_path / "stats.json").write_text(json.dumps(
        {"documents": 5, "tokens": 40, "by_language": {"de": {"documents": 2, "tokens": 9}}}))
    src = DocumentSource(str(tmp_path / "*.jsonl*"))
    assert [src[i] for i in range(len(src))] == recs and src.blank_lines == 1
    assert read_stats(str(tmp_path / "*.jsonl*"))["tokens"] == 40
    assert read_stats(str(tmp_path / "*.jsonl*"), "de")["documents"] == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"x.jsonl: record 1 \(line 2\): invalid JSON"):
        DocumentSource(str(tmp_path / "bad" / "*.jsonl"))[1]
    with pytest.raises(FileNotFoundError, match="no files match"):
        DocumentSource(str(tmp_path / "none" / "*.jsonl"))


def test_sources_tfrecord_and_array_record(tmp_path):
    import tensorflow as tf
    from array_record.python.array_record_module import ArrayRecordWriter

    texts = [f"{L.LANGUAGE_NAMES[x]} text {i}" for i, x in enumerate(L.LANGUAGES[:6])]
    with tf.io.TFRecordWriter(str(tmp_path / "web.tfrecord")) as w:
        for i, t in enumerate(texts[:3]):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode()])),
                "ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[i, -2, 300000])),
                "score": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, i])),
            }))
            w.write(ex.SerializeToString())
    w = ArrayRecordWriter(str(tmp_path / "web.array_record"), "group_size:1")
    for t in texts[3:]:
        w.write(json.dumps({"text": t}).encode())
    w.close()
    tf_src = DocumentSource(str(tmp_path / "*.tfrecord"))
    ar_src = DocumentSource(str(tmp_path / "*.array_record"))
    assert list(tf_src) == [{"text": t, "ids": [i, -2, 300000], "score": [0.5, float(i)]}
                            for i, t in enumerate(texts[:3])]
    assert [ar_src[i]["text"] for i in (2, 0, 1)] == [texts[5], texts[3], texts[4]]
    # Pre-tokenized records are used as given (EOS appended once).
    tok = get_tokenizer()
    spec = TaskSpec("web.en", "web", "", ("en",))
    ids = tok.encode("pre tokenized")
    assert spec.document({"tokens": ids}).tokens.tolist() == ids + [tok.eos_id]
    with pytest.raises(ValueError, match="token ids"):
        spec.document({"tokens": [-1]})


def test_seqio_tasks_give_the_same_tokens(corpus):
    import seqio

    from marco_jax.data import seqio_tasks

    catalog = task_catalog(str(corpus))
    names = ["web.ja", "bitext.en_kk", "sft.chat"]
    seqio_tasks.register_tasks({n: catalog[n] for n in names})
    for name in names:
        ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False,
                                                         use_cached=False)
        for i, ex in enumerate(ds.take(3).as_numpy_iterator()):
            doc = catalog[name].document(catalog[name].source[i])
            np.testing.assert_array_equal(ex["targets"], doc.tokens)


def test_eval_iterator_reads_only_held_out_documents(corpus):
    from marco_jax.data.pipeline import make_eval_iterator

    cfg = data_config(corpus, eval_fraction=0.2)
    train, held = make_train_iterator(cfg, 0, 1), make_eval_iterator(cfg, 0, 1)
    assert held.source_names == train.source_names
    for j in range(3000):
        (t1, d1), (t2, d2) = train.example(j), held.example(j)
        n1, n2 = len(train.plan.tasks[t1].source), len(held.plan.tasks[t2].source)
        assert 0 <= d1 < n1 - math.ceil(0.2 * n1)
        assert n2 - math.ceil(0.2 * n2) <= d2 < n2
    b = next(held)
    assert b["tokens"].shape == (4, 64) and (b["segment_ids"] > 0).any()
    with pytest.raises(ValueError, match="eval_fraction"):
        make_eval_iterator(data_config(corpus), 0, 1)


def test_demo_mixture_reads_the_package_sample_corpus():
    """The default config (mixture "demo", no sources_dir) runs on the shipped sample corpus."""
    c = data_config("", mixture="demo", seq_len=128)
    plan = plan_mixture(c.data)
    assert {"web.en", "web.ne", "bitext.en_de", "knowledge", "synthetic"} <= set(plan.names)
    assert sum(plan.token_rates.values()) == pytest.approx(1.0)
    assert plan.group_shares["english"] == pytest.approx(0.32)  # every stage-I group present
    b = next(make_train_iterator(c, 0, 1))
    assert (b["segment_ids"] > 0).mean() > 0.5
    sft = make_train_iterator(data_config("", mixture="sft", seq_len=256), 0, 1)
    # the three SFT layouts the package ships (messages, prompt/response, ShareGPT)
    assert sft.source_names == ["sft.chat", "sft.prompt_response", "sft.sharegpt"]
    assert next(sft)["loss_mask"].sum() > 0


def test_pool_sizes_from_data_pipelines_stats(tmp_path):
    """Shards in data_pipelines' layout (<out>/<lang>/part-*, <out>/stats.json by_language): the
    temperature formula uses the stats' token counts."""
    web = tmp_path / "web"
    counts = {"en": (3, 9000), "zh": (2, 1000)}
    for lang, (docs, _) in counts.items():
        (web / lang).mkdir(parents=True)
        (web / lang / "part-00000-of-00001.jsonl").write_text(
            "".join(json.dumps({"text": f"{lang} {i}", "lang": lang}) + "\n" for i in range(docs)))
    (web / "stats.json").write_text(json.dumps({
        "documents": 5, "tokens": 10000,
        "by_language": {k: {"documents": d, "tokens": t} for k, (d, t) in counts.items()}}))
    shares = {"english": 0.0, "chinese": 0.0, "high_resource": 0.0, "low_resource": 0.0,
              "parallel": 0.0, "knowledge": 0.0, "synthetic": 0.0}
    c = data_config(tmp_path, mixture="demo", pool_sizes="sources", temperature=2.0,
                    shares=shares | {"english": 0.5, "chinese": 0.5})
    plan = plan_mixture(c.data)
    assert plan.pools == {"web.en": 9000.0, "web.zh": 1000.0}
    assert plan.pool_origin == {"web.en": "stats", "web.zh": "stats"}
    assert plan.mean_tokens == {"web.en": 3000.0, "web.zh": 500.0}
    # Token shares 1/2 each -> example probabilities proportional to share / mean length.
    assert plan.probabilities["web.zh"] == pytest.approx((0.5 / 500) / (0.5 / 500 + 0.5 / 3000))


def test_seqio_mixture_carries_the_plan_rates(corpus):
    import seqio

    from marco_jax.data import seqio_tasks

    plan = plan_mixture(data_config(corpus, mixture="marco_stage2").data)
    mix = seqio_tasks.register_mixture(plan)
    assert seqio.get_mixture_or_task("marco_stage2") is mix
    assert sorted(t.name for t in mix.tasks) == sorted(plan.names)
    for t in mix.tasks:
        assert mix.get_rate(t) == pytest.approx(plan.probabilities[t.name])
