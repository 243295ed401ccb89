"""Random-access document sources over JSONL(.gz), TFRecord(.gz) and ArrayRecord shards.

Paths are local files or any filesystem `tf.io.gfile` knows (gs://...), and may be globs. A
source is an ordered list of shards with a record index, so record i of the source is a pure
function of i: what the index-addressable mixture stream needs.

- JSONL: one JSON object per line; blank lines are not records (counted in `blank_lines`).
  Local plain files are memory-mapped; .gz and remote files are read into memory once.
- TFRecord: the record framing (length, crc, data, crc) is indexed by a header scan; payloads are
  JSON objects or serialized `tf.train.Example`s.
- ArrayRecord: random access by grain's `ArrayRecordDataSource`; payloads as for TFRecord.
  (grain has no random-access TFRecord or JSONL source: those two are indexed here.)

Stats: a `stats.json` next to the shards, `{"documents": N, "tokens": N, "by_language":
{lang: {"documents": n, "tokens": n}}}` (written by data_pipelines), gives the token counts that
mixing rates use. `read_stats` finds it; without one the caller estimates (and says so).
"""

from __future__ import annotations

import bisect
import glob as globlib
import gzip
import io
import json
import mmap
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

_CHUNK = 1 << 26  # bytes scanned at a time when indexing newlines


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # lazy: only remote paths need it

    return tf.io.gfile


def expand_pattern(pattern: str) -> list[str]:
    """Sorted files matching a path or glob (local or remote); empty list when nothing matches."""
    if is_remote(pattern):
        gf = _gfile()
        return sorted(gf.glob(pattern)) if any(c in pattern for c in "*?[") else (
            [pattern] if gf.exists(pattern) else [])
    return sorted(p for p in globlib.glob(pattern) if os.path.isfile(p))


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        with _gfile().GFile(path, "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def shard_format(path: str) -> str:
    name = os.path.basename(path).removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if ".tfrecord" in name or name.endswith(".tfrec"):
        return "tfrecord"
    if ".array_record" in name or ".arrayrecord" in name:
        return "array_record"
    raise ValueError(f"{path}: unknown shard format; expected *.jsonl[.gz], *.tfrecord*[.gz] or "
                     f"*.array_record*")


class _Shard:
    path: str

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"{self.path}: record {i}"


class _BufferShard(_Shard):
    """Records at [starts[i], ends[i]) of an in-memory or memory-mapped buffer."""

    def __init__(self, path: str, buf, starts: np.ndarray, ends: np.ndarray,
                 lines: bool = False):
        self.path, self._buf, self._starts, self._ends = path, buf, starts, ends
        self._lines = lines  # JSONL: also name the line (blank lines are not records)

    def __len__(self) -> int:
        return len(self._starts)

    def read(self, i: int) -> bytes:
        return bytes(self._buf[int(self._starts[i]):int(self._ends[i])])

    def describe(self, i: int) -> str:
        if not self._lines:
            return super().describe(i)
        line = bytes(self._buf[:int(self._starts[i])]).count(b"\n") + 1  # error path only
        return f"{self.path}: record {i} (line {line})"


def _load_buffer(path: str):
    """A memory map for local plain files (no copy), the (decompressed) bytes otherwise."""
    if is_remote(path) or path.endswith(".gz"):
        return read_bytes(path)
    size = os.path.getsize(path)
    if size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _jsonl_shard(path: str) -> tuple[_Shard, int]:
    buf = _load_buffer(path)
    size = len(buf)
    newlines = []
    view = np.frombuffer(buf, dtype=np.uint8) if size else np.zeros(0, np.uint8)
    for lo in range(0, size, _CHUNK):
        newlines.append(np.flatnonzero(view[lo:lo + _CHUNK] == 10) + lo)
    nl = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [size]]).astype(np.int64)
    # Strip a trailing \r (CRLF files); lines with nothing left are not records.
    cr = (ends > starts) & (view[np.maximum(ends - 1, 0)] == 13) if size else ends > starts
    ends = ends - cr
    keep = ends > starts
    blank = int((~keep[:-1]).sum()) + int(not keep[-1] and starts[-1] < size)
    return _BufferShard(path, buf, starts[keep], ends[keep], lines=True), blank


def _tfrecord_shard(path: str) -> _Shard:
    buf = _load_buffer(path)
    starts, ends, pos, size = [], [], 0, len(buf)
    while pos < size:
        if pos + 12 > size:
            raise ValueError(f"{path}: truncated TFRecord header at byte {pos}")
        (length,) = struct.unpack_from("<Q", buf, pos)
        data = pos + 12
        if data + length + 4 > size:
            raise ValueError(f"{path}: TFRecord at byte {pos} claims {length} bytes, past the "
                             f"end of the file ({size} bytes)")
        starts.append(data)
        ends.append(data + length)
        pos = data + length + 4
    return _BufferShard(path, buf, np.asarray(starts, np.int64), np.asarray(ends, np.int64))


class _ArrayRecordShard(_Shard):
    """ArrayRecord random access through grain's `ArrayRecordDataSource` (a drop-in: len and
    record i as bytes; readers open lazily, paths through etils.epath so gs:// works)."""

    def __init__(self, path: str):
        import grain  # lazy: only ArrayRecord sources need it

        self.path = path
        self._source = grain.sources.ArrayRecordDataSource([path])
        self._n = len(self._source)

    def __len__(self) -> int:
        return self._n

    def read(self, i: int) -> bytes:
        return self._source[i]


# Why a record is bad (the keys of the bad-record counts).
REASONS = ("invalid_utf8", "invalid_json", "not_an_object", "not_a_record", "bad_fields")


class BadRecord(ValueError):
    """A record that cannot become a document: names the file, the record number in that file
    (0-based; for JSONL the line among non-blank lines) and the problem (`reason` in REASONS)."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.where, self.reason, self.detail = where, reason, detail


def decode_payload(raw: bytes, where: str) -> dict[str, Any]:
    """A record's payload as a dict: a JSON object, or a tf.train.Example's features."""
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecord(where, "invalid_utf8", f"invalid UTF-8 at byte {e.start} "
                            f"({raw[max(0, e.start - 20):e.start + 20]!r})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadRecord(where, "invalid_json", f"invalid JSON ({e.msg} at column "
                            f"{e.colno}): {raw[:120]!r}") from None
        if not isinstance(obj, dict):
            raise BadRecord(where, "not_an_object",
                            f"expected a JSON object, got {type(obj).__name__}")
        return obj
    return _decode_example(raw, where)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, where: str):
    """(field number, wire type, value) of a protobuf message; value is bytes or an int."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise ValueError(f"truncated protobuf field {number}")
            yield number, wire, buf[pos:pos + length]
            pos += length
        elif wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 5:
            yield number, wire, buf[pos:pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, buf[pos:pos + 8]
            pos += 8
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _decode_example(raw: bytes, where: str) -> dict[str, Any]:
    """A serialized tf.train.Example's features, decoded by hand (no TensorFlow import).

    Example{1: Features{1: map<string, Feature>}}; Feature{1: BytesList, 2: FloatList,
    3: Int64List}, each a repeated field 1 (floats/ints packed or not). Single values are
    unwrapped; bytes are decoded as UTF-8.
    """
    out: dict[str, Any] = {}
    try:
        for num, _, features in _fields(raw, where):
            if num != 1:
                continue
            for num2, _, entry in _fields(features, where):
                if num2 != 1:
                    continue
                key, feature = "", b""
                for k, _, v in _fields(entry, where):
                    if k == 1:
                        key = v.decode("utf-8")
                    elif k == 2:
                        feature = v
                values: list[Any] = []
                kind = 0
                for kind, _, lst in _fields(feature, where):
                    for _, wire, v in _fields(lst, where):
                        if kind == 1:
                            values.append(v.decode("utf-8"))
                        elif kind == 2:
                            values += (list(struct.unpack(f"<{len(v) // 4}f", v)) if wire == 2
                                       else [struct.unpack("<f", v)[0]])
                        elif kind == 3:
                            values += _packed_ints(v) if wire == 2 else [_signed(v)]
                out[key] = values[0] if kind == 1 and len(values) == 1 else values
    except UnicodeDecodeError as e:
        raise BadRecord(where, "invalid_utf8", f"tf.train.Example with invalid UTF-8 in a string "
                        f"feature ({e})") from None
    except (IndexError, ValueError) as e:
        raise BadRecord(where, "not_a_record",
                        f"neither a JSON object nor a tf.train.Example ({e})") from None
    if not out:
        raise BadRecord(where, "not_a_record",
                        "neither a JSON object nor a tf.train.Example with features")
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_ints(buf: bytes) -> list[int]:
    pos, out = 0, []
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(_signed(v))
    return out


class DocumentSource:
    """Records of all shards matching `pattern`, addressable by a global index."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.files = expand_pattern(pattern)
        if not self.files:
            raise FileNotFoundError(f"no files match source pattern {pattern!r}")
        self.blank_lines = 0
        self._shards: list[_Shard] = []
        for path in self.files:
            fmt = shard_format(path)
            if fmt == "jsonl":
                shard, blank = _jsonl_shard(path)
                self.blank_lines += blank
            elif fmt == "tfrecord":
                shard = _tfrecord_shard(path)
            else:
                shard = _ArrayRecordShard(path)
            self._shards.append(shard)
        # Zero records is allowed here (a language that kept no documents): the mixture plan
        # decides whether the task can be left out.
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards]).tolist()

    def __len__(self) -> int:
        return self._offsets[-1]

    def locate(self, i: int) -> str:
        """"<file>: record <n>" of record i (n counts records in that file from 0)."""
        s = bisect.bisect_right(self._offsets, i) - 1
        return self._shards[s].describe(i - self._offsets[s])

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Record i decoded; a bad one raises `BadRecord` naming file and record."""
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {self.pattern!r} ({len(self)} records)")
        s = bisect.bisect_right(self._offsets, i) - 1
        return decode_payload(self._shards[s].read(i - self._offsets[s]), self.locate(i))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def read_stats(pattern: str, language: str | None = None) -> dict[str, Any] | None:
    """Token/document counts for a source from the stats.json next to it, or None.

    Looks for `<file stem>.stats.json` (single-file sources), then `stats.json` in the shards'
    directory and its parent; with `language`, a `by_language[language]` entry wins.
    """
    files = expand_pattern(pattern)
    if not files:
        return None
    first = files[0]
    folder = os.path.dirname(first)
    stem = os.path.basename(first).split(".")[0]
    candidates = []
    if len(files) == 1:
        candidates.append(os.path.join(folder, f"{stem}.stats.json"))
    candidates += [os.path.join(folder, "stats.json"),
                   os.path.join(os.path.dirname(folder), "stats.json")]
    for path in candidates:
        if not exists(path):
            continue
        try:
            stats = json.load(io.BytesIO(read_bytes(path)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid stats JSON ({e.msg})") from None
        by_lang = stats.get("by_language") or {}
        if language is not None and language in by_lang:
            entry = by_lang[language]
            entry = {"tokens": entry} if isinstance(entry, int | float) else dict(entry)
            return _check_stats(entry, path, f"by_language[{language!r}]")
        if path.endswith(f"{stem}.stats.json") or os.path.dirname(path) == folder:
            if "tokens" in stats:
                return _check_stats(stats, path, "top level")
    return None


def _check_stats(entry: dict[str, Any], path: str, where: str) -> dict[str, Any]:
    tokens = entry.get("tokens")
    if not isinstance(tokens, int | float) or tokens <= 0:
        raise ValueError(f"{path}: {where}: 'tokens' must be a positive number, got {tokens!r}")
    docs = entry.get("documents")
    if docs is not None and (not isinstance(docs, int | float) or docs <= 0):
        raise ValueError(f"{path}: {where}: 'documents' must be a positive number, got {docs!r}")
    return {"tokens": float(tokens), "documents": None if docs is None else float(docs),
            "path": path}
