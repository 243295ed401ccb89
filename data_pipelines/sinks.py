"""Output shards: `out/{lang}/part-SSSSS-of-NNNNN.{tfrecord|array_record|jsonl}`.

TFRecord / ArrayRecord records are serialized `tf.train.Example`s with bytes features (web:
"text", "lang", "id"; bitext: "src", "tgt", "src_lang", "tgt_lang" + float "score"), encoded here
by hand (the proto wire format is tiny) so Beam workers need no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
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


def write_partition(pcoll, prefix: str, fmt: str, num_shards: int, to_example, to_json, label: str):
    """Writes one partition (one language or language pair) in `fmt` plus JSONL for inspection."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: expected one of {FORMATS}")
    if fmt == "tfrecord":
        _ = (pcoll | f"{label}ToExample" >> beam.Map(to_example)
             | f"{label}WriteTFRecord" >> beam.io.WriteToTFRecord(
                 prefix, file_name_suffix=".tfrecord", num_shards=num_shards,
                 shard_name_template=SHARD_TEMPLATE))
    elif fmt == "array_record":
        from array_record.beam.arrayrecordio import WriteToArrayRecord

        _ = (pcoll | f"{label}ToExample" >> beam.Map(to_example)
             | f"{label}WriteArrayRecord" >> WriteToArrayRecord(
                 prefix, file_name_suffix=".array_record", num_shards=num_shards,
                 shard_name_template=SHARD_TEMPLATE))
    _ = (pcoll | f"{label}ToJson" >> beam.Map(lambda r: jsonl_line(to_json(r)))
         | f"{label}WriteJsonl" >> beam.io.WriteToText(
             prefix, file_name_suffix=".jsonl", num_shards=num_shards,
             shard_name_template=SHARD_TEMPLATE))


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
