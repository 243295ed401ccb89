"""The keyed shard sink of the cleaning pipelines: every format readable by its own reader, every
partition present (empty shards for one that kept nothing), records spread over fixed shards."""

import json

import apache_beam as beam
import pytest

from data_pipelines import sinks


def _write(tmp_path, fmt: str, num_shards: int, records: list[dict]) -> None:
    with beam.Pipeline() as p:
        sinks.write_partitioned(
            p | beam.Create(records), str(tmp_path), ("de", "en", "ja"), lambda r: r["lang"],
            fmt, num_shards, to_example=lambda r: sinks.tf_example({"text": r["text"]}),
            to_json=lambda r: {"text": r["text"], "lang": r["lang"]})


RECORDS = [{"uid": f"u{i}", "lang": "en" if i % 3 else "de", "text": f"doc {i} é"}
           for i in range(30)]


def test_tfrecord_shards_read_back_with_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    _write(tmp_path, "tfrecord", 2, RECORDS)
    for lang in ("de", "en"):
        shards = sorted((tmp_path / lang).glob("part-*-of-00002.tfrecord"))
        assert len(shards) == 2
        texts = sorted(tf.train.Example.FromString(r.numpy()).features.feature["text"]
                       .bytes_list.value[0].decode() for r in tf.data.TFRecordDataset(shards))
        assert texts == sorted(r["text"] for r in RECORDS if r["lang"] == lang)
        lines = [json.loads(x) for f in sorted((tmp_path / lang).glob("*.jsonl"))
                 for x in f.read_text().splitlines()]
        assert sorted(d["text"] for d in lines) == texts
    # a partition that kept nothing still has its (empty) shards
    assert sorted(f.name for f in (tmp_path / "ja").iterdir()) == [
        "part-00000-of-00002.jsonl", "part-00000-of-00002.tfrecord",
        "part-00001-of-00002.jsonl", "part-00001-of-00002.tfrecord"]
    assert all(f.stat().st_size == 0 for f in (tmp_path / "ja").iterdir())


def test_array_record_and_automatic_shard_count(tmp_path):
    ar = pytest.importorskip("array_record.python.array_record_module")
    _write(tmp_path, "array_record", 0, RECORDS)
    (shard,) = (tmp_path / "en").glob("part-00000-of-00001.array_record")
    reader = ar.ArrayRecordReader(str(shard))
    assert reader.num_records() == 20
    reader.close()
    assert (tmp_path / "ja" / "part-00000-of-00001.jsonl").read_text() == ""
    assert sinks.shard_count(0, 0) == 1 and sinks.shard_count(sinks.AUTO_SHARD_RECORDS + 1, 0) == 2
    assert sinks.shard_count(5, 3) == 3


def test_tfrecord_frame_matches_beam_encoder():
    from apache_beam.io.tfrecordio import _TFRecordUtil

    class Buf:
        data = b""

        def write(self, b):
            self.data += b

    buf = Buf()
    _TFRecordUtil.write_record(buf, b"payload \x00\xff")
    assert sinks.tfrecord_frame(b"payload \x00\xff") == buf.data
