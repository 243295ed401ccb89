"""Streaming safetensors reading and writing, without the `safetensors` package's whole-file views.

Format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N, N bytes
of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
byte buffer, every tensor row-major and the offsets covering the buffer without gaps.

Reads use plain `readinto` on a fresh buffer rather than mmap: mapped file pages count towards the
resident set, so a mapped read of a 100 GB checkpoint would look (and, under memory pressure, act)
like holding it. Writes emit the header first (everything in it is known from the config), then
each tensor's bytes in order, optionally a few rows at a time, so only one block is ever in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20  # the reference implementation's limit


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the tensor in `file`

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo for one .safetensors file (reads only the header)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file {size} B)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    out = {}
    for name, entry in header.items():
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}; "
                             f"supported: {sorted(DTYPES)}")
        info = TensorInfo(path, DTYPES[entry["dtype"]], tuple(entry["shape"]),
                          8 + n + entry["data_offsets"][0])
        begin, end = entry["data_offsets"]
        if end - begin != info.nbytes or info.start + info.nbytes > size:
            raise ValueError(f"{path}: tensor {name!r} offsets {entry['data_offsets']} do not "
                             f"match shape {list(info.shape)} x {entry['dtype']} (or the file is "
                             "truncated)")
        out[name] = info
    return out


def read_tensor(info: TensorInfo, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor, or rows [r0, r1) of its first axis, read into a fresh array."""
    shape, start = info.shape, info.start
    if rows is not None:
        r0, r1 = rows
        row_bytes = info.nbytes // max(shape[0], 1)
        shape, start = (r1 - r0, *shape[1:]), start + r0 * row_bytes
    buf = np.empty(int(np.prod(shape, dtype=np.int64)) * info.dtype.itemsize, np.uint8)
    with open(info.file, "rb") as f:
        f.seek(start)
        got = f.readinto(buf)
    if got != buf.size:
        raise ValueError(f"{info.file}: truncated (wanted {buf.size} B at offset {start}, "
                         f"got {got})")
    return buf.view(info.dtype).reshape(shape)


class SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, in the order given at construction.

    `append(name, block)` adds the next rows of tensor `name` (the whole tensor or a block of its
    first axis); `close()` checks every byte arrived and moves the file into place.
    """

    def __init__(self, path: str | Path, tensors: Iterable[tuple[str, np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._plan: list[tuple[str, np.dtype, tuple[int, ...], int]] = []
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for name, dtype, shape in tensors:
            dtype = np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._plan.append((name, dtype, tuple(shape), nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the buffer 8-byte aligned, like the reference writer
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._index, self._written = 0, 0

    def append(self, name: str, block: np.ndarray) -> None:
        if self._index >= len(self._plan):
            raise ValueError(f"{self.path}: got {name!r} after all planned tensors")
        want, dtype, shape, nbytes = self._plan[self._index]
        if name != want:
            raise ValueError(f"{self.path}: got {name!r}, expected {want!r} next")
        if block.dtype != dtype or tuple(block.shape[1:]) != shape[1:]:
            raise ValueError(f"{self.path}: {name!r} block {block.dtype}{list(block.shape)} does "
                             f"not fit {dtype}{list(shape)}")
        data = np.ascontiguousarray(block)
        self._f.write(data.view(np.uint8).reshape(-1).data)
        self._written += data.nbytes
        if self._written > nbytes:
            raise ValueError(f"{self.path}: {name!r} got more than its {nbytes} bytes")
        if self._written == nbytes:
            self._index, self._written = self._index + 1, 0

    def close(self) -> None:
        self._f.close()
        if self._index != len(self._plan):
            missing = [p[0] for p in self._plan[self._index:]]
            raise ValueError(f"{self.path}: closed before writing {missing}")
        os.replace(self._tmp, self.path)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
