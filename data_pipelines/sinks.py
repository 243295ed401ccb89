"""Output shards: `out/{lang}/part-SSSSS-of-NNNNN.{tfrecord|array_record|jsonl}`.

TFRecord / ArrayRecord records are serialized `tf.train.Example`s with bytes features (web:
"text", "lang", "id"; bitext: "src", "tgt", "src_lang", "tgt_lang" + float "score"), encoded here
by hand (the proto wire format is tiny) so Beam workers need no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import apache_beam as beam

FORMATS = ("tfrecord", "array_record", "jsonl")
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def tf_example(features: dict[str, str | bytes | float]) -> bytes:
    """A serialized tf.train.Example: str/bytes -> BytesList, float -> FloatList (one value)."""
    entries = b""
    for key in sorted(features):
        value = features[key]
        if isinstance(value, float):
            feature = _field(2, _field(1, struct.pack("<f", value)))  # FloatList, packed
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            feature = _field(1, _field(1, raw))  # BytesList
        entries += _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))
    return _field(1, entries)


def jsonl_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


# num_shards=0: one shard per this many records of a partition (at least one shard).
AUTO_SHARD_RECORDS = 100_000


def shard_count(n_records: int, num_shards: int) -> int:
    return num_shards if num_shards > 0 else max(1, -(-n_records // AUTO_SHARD_RECORDS))


def _shard_of(uid: str, n: int) -> int:
    """A stable shard for a record (a hash of its uid, not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "big") % n


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(payload: bytes) -> bytes:
    """One TFRecord: length, masked CRC32C of the length, payload, masked CRC32C of it."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", _masked_crc32c(length)), payload,
                     struct.pack("<I", _masked_crc32c(payload))))


class _ShardWriter:
    """Writes one shard `path` in `fmt` ("jsonl" lines, TFRecord frames or ArrayRecord)."""

    def __init__(self, path: str, fmt: str):
        from apache_beam.io.filesystems import FileSystems

        self.path, self.fmt, self._local = path, fmt, None
        if fmt == "array_record":  # ArrayRecordWriter writes local files only: stage, then copy
            import tempfile

            from array_record.python.array_record_module import ArrayRecordWriter

            self._local = tempfile.NamedTemporaryFile(suffix=".array_record", delete=False).name
            self._ar = ArrayRecordWriter(self._local, "group_size:1")
        else:
            self._f = FileSystems.create(path)

    def write(self, payload: bytes) -> None:
        if self.fmt == "array_record":
            self._ar.write(payload)
        elif self.fmt == "tfrecord":
            self._f.write(tfrecord_frame(payload))
        else:
            self._f.write(payload + b"\n")

    def close(self) -> None:
        if self._local is None:
            self._f.close()
            return
        import os

        from apache_beam.io.filesystems import FileSystems

        self._ar.close()
        with open(self._local, "rb") as src, FileSystems.create(self.path) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)  # streamed: a shard can exceed memory
        os.unlink(self._local)


class _WriteShardFn(beam.DoFn):
    """((partition, shard, n_shards), records) -> `{output}/{partition}/part-SSSSS-of-NNNNN`
    in `fmt` plus .jsonl; `None` records are the placeholders that make empty shards exist."""

    def __init__(self, output: str, fmt: str, to_example, to_json):
        self.output, self.fmt, self.to_example, self.to_json = output, fmt, to_example, to_json

    def process(self, kv):
        (name, shard, n), records = kv
        prefix = f"{self.output}/{name}/part-{shard:05d}-of-{n:05d}"
        writers = [_ShardWriter(f"{prefix}.jsonl", "jsonl")]
        if self.fmt != "jsonl":
            writers.append(_ShardWriter(f"{prefix}.{self.fmt}", self.fmt))
        for r in records:
            if r is None:
                continue
            writers[0].write(jsonl_line(self.to_json(r)).encode("utf-8"))
            if len(writers) > 1:
                writers[1].write(self.to_example(r))
        for w in writers:
            w.close()
        yield name


def write_partitioned(records, output: str, names: tuple[str, ...], partition_of, fmt: str,
                      num_shards: int, to_example, to_json, label: str = "Write"):
    """Writes every record to `output/{partition_of(r)}/part-SSSSS-of-NNNNN.{fmt}` (+ .jsonl for
    inspection), every partition in `names` included (empty shards when it kept nothing).

    One GroupByKey on (partition, shard) for all partitions: a Beam file sink per partition
    costs a fixed ~0.3 s of stages on the DirectRunner, 58 of them (29 languages x 2 formats)
    more than all the per-document work of a small run (bench/bench_clean.py speed)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: expected one of {FORMATS}")
    p = records.pipeline
    part = records | f"{label}Partition" >> beam.Map(lambda r: (partition_of(r), r))
    if num_shards > 0:
        n_of = beam.pvalue.AsSingleton(p | f"{label}NoCounts" >> beam.Create([{}]))
    else:
        n_of = beam.pvalue.AsSingleton(
            part | f"{label}Count" >> beam.combiners.Count.PerKey()
            | f"{label}CountDict" >> beam.combiners.ToDict())

    def keyed(kv, counts):
        n = shard_count(counts.get(kv[0], 0), num_shards)
        return (kv[0], _shard_of(kv[1]["uid"], n), n), kv[1]

    def placeholders(name, counts):
        n = shard_count(counts.get(name, 0), num_shards)
        return [((name, s, n), None) for s in range(n)]

    data = part | f"{label}Shard" >> beam.Map(keyed, n_of)
    empty = (p | f"{label}Names" >> beam.Create(sorted(names))
             | f"{label}Placeholders" >> beam.FlatMap(placeholders, n_of))
    return ((data, empty) | f"{label}All" >> beam.Flatten()
            | f"{label}Group" >> beam.GroupByKey()
            | f"{label}Shards" >> beam.ParDo(_WriteShardFn(output, fmt, to_example, to_json)))


def sampled(record: dict, fraction: float) -> bool:
    """A deterministic `fraction` of records, chosen by a hash of their uid."""
    if fraction >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(record["uid"].encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def write_rejected_sample(rejected, prefix: str, fraction: float) -> None:
    """Writes `fraction` of the rejected records as JSONL (all of them are counted regardless)."""
    if fraction <= 0:
        return
    _ = (rejected | "SampleRejected" >> beam.Filter(sampled, fraction)
         | "RejectedJson" >> beam.Map(jsonl_line)
         | "WriteRejected" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
