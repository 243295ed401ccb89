"""Tensor-by-tensor access to a Hugging Face checkpoint directory.

Safetensors (single `model.safetensors` or shards listed in `model.safetensors.index.json`) are
read directly. PyTorch `.bin` files are the optional fallback: loaded with
`torch.load(weights_only=True, mmap=True)` (never a full unpickle) through a lazily imported torch,
one shard at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from marco_jax.convert.safetensors_io import TensorInfo, read_header, read_tensor

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class HFSource:
    """name -> (shape, dtype) without reading data; `read(name, rows)` reads one tensor or rows."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: HF checkpoint directory does not exist")
        d = self.directory
        if (d / SAFETENSORS_INDEX).exists():
            files = _files_from_index(d / SAFETENSORS_INDEX)
            self.format = "safetensors"
        elif (d / SAFETENSORS_SINGLE).exists():
            files = [d / SAFETENSORS_SINGLE]
            self.format = "safetensors"
        elif (d / BIN_INDEX).exists():
            files = _files_from_index(d / BIN_INDEX)
            self.format = "bin"
        elif (d / BIN_SINGLE).exists():
            files = [d / BIN_SINGLE]
            self.format = "bin"
        else:
            raise FileNotFoundError(
                f"{d}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE} or {BIN_INDEX}")
        self.files = files
        self._infos: dict[str, TensorInfo] = {}
        self._bin_file: Path | None = None
        self._bin_state: dict = {}
        self._shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._file_of: dict[str, Path] = {}
        for f in files:
            if self.format == "safetensors":
                for name, info in read_header(f).items():
                    self._add(name, f, info.shape, info.dtype)
                    self._infos[name] = info
            else:
                for name, t in self._load_bin(f).items():
                    self._add(name, f, tuple(t.shape), _torch_to_np_dtype(t.dtype))

    def _add(self, name: str, file: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if name in self._shapes:
            raise ValueError(f"{self.directory}: tensor {name!r} appears in both "
                             f"{self._file_of[name].name} and {file.name}")
        self._shapes[name] = (shape, dtype)
        self._file_of[name] = file

    def names(self) -> list[str]:
        """Tensor names in file order (reading in this order touches each file once)."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self._shapes, key=lambda n: order[self._file_of[n]])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name][0]

    def dtype(self, name: str) -> np.dtype:
        return self._shapes[name][1]

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        if self.format == "safetensors":
            return read_tensor(self._infos[name], rows)
        t = self._load_bin(self._file_of[name])[name]
        if rows is not None:
            t = t[rows[0]:rows[1]]
        return _torch_to_numpy(t)

    def _load_bin(self, file: Path) -> dict:
        if file != self._bin_file:
            try:
                import torch
            except ImportError:
                raise ImportError(f"{file}: reading .bin checkpoints needs torch (pip install "
                                  "marco_jax[convert]); safetensors checkpoints do not") from None
            self._bin_state = {}  # drop the previous shard's mapping before opening the next
            try:
                self._bin_state = torch.load(file, map_location="cpu", weights_only=True,
                                             mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                self._bin_state = torch.load(file, map_location="cpu", weights_only=True)
            self._bin_file = file
        return self._bin_state


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index}: not a valid index file (need a 'weight_map'): {e}") from None
    files = list(dict.fromkeys(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).exists()]
    if missing:
        raise FileNotFoundError(f"{index}: lists shard files that do not exist: {missing}")
    return [index.parent / f for f in files]


def _torch_to_np_dtype(dtype) -> np.dtype:
    import torch

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
             torch.bfloat16: ml_dtypes.bfloat16}
    if dtype not in table:
        raise ValueError(f"unsupported torch dtype {dtype}")
    return np.dtype(table[dtype])


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.contiguous().numpy().copy()
