"""Tensor-by-tensor access to a Hugging Face checkpoint directory.

Safetensors (single `model.safetensors` or shards listed in `model.safetensors.index.json`) are
read directly. PyTorch `.bin` files are the optional fallback: loaded with
`torch.load(weights_only=True, mmap=True)` (never a full unpickle) through a lazily imported torch,
one shard at a time; a file torch refuses, or one that is not a {name: tensor} state dict, is a
ValueError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from marco_jax.convert.safetensors_io import TensorInfo, read_header, read_tensor
from marco_jax.model.config import Qwen2Config

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
HF_CONFIG = "config.json"
# config.json fields that must be positive integers when present (the architecture's sizes)
_POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim",
                        "max_position_embeddings")
_POSITIVE_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")


def read_hf_config(directory: str | Path) -> Qwen2Config:
    """The Qwen2Config of a HF model directory's config.json; every problem (missing file,
    invalid JSON, not an object, a size that is not a positive integer, an unsupported setting)
    is one error naming the file."""
    path = Path(directory) / HF_CONFIG
    try:
        hf = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected a HF model directory)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                         ) from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object of model settings, got "
                         f"{type(hf).__name__}")
    for key in _POSITIVE_INT_FIELDS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise ValueError(f"{path}: {key}={value!r}; expected a positive integer")
    for key in _POSITIVE_FLOAT_FIELDS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not value > 0):
            raise ValueError(f"{path}: {key}={value!r}; expected a positive number")
    try:
        return Qwen2Config.from_hf_dict(hf)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: {str(e).removeprefix('config.json ')}") from None


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
                    self._add(name, f, tuple(t.shape), _torch_to_np_dtype(t.dtype, f, name))

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
            self._bin_state = _checked_state_dict(file, _torch_load(torch, file), torch)
            self._bin_file = file
        return self._bin_state


def _torch_load(torch, file: Path) -> Any:
    """torch.load(weights_only=True): memory-mapped where the format allows. Anything torch
    refuses (an unsafe pickle, a truncated or foreign file) is a ValueError naming the file."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # legacy (non-zip) format cannot be memory-mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...: all mean "bad file"
        raise ValueError(f"{file}: refused by torch.load(weights_only=True), which loads only "
                         f"plain state dicts of tensors: {_torch_reason(e)}") from None


def _torch_reason(e: Exception) -> str:
    """The informative line of a torch.load error (its weights_only errors are paragraphs)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue",
                   "WeightsUnpickler error")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or [type(e).__name__])[0][:300]


def _checked_state_dict(file: Path, state: Any, torch) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"{file}: not a state dict (expected {{name: tensor}}, got a "
                         f"{type(state).__name__})")
    bad = [(k, type(v).__name__) for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{file}: not a state dict of tensors: entry {bad[0][0]!r} is a "
                         f"{bad[0][1]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return state


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


def _torch_to_np_dtype(dtype, file: Path, name: str) -> np.dtype:
    import torch

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
             torch.bfloat16: ml_dtypes.bfloat16}
    if dtype not in table:
        raise ValueError(f"{file}: tensor {name} has dtype {dtype}; expected float32, float16, "
                         "float64 or bfloat16")
    return np.dtype(table[dtype])


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.contiguous().numpy().copy()
