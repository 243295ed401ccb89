"""Write and read Orbax (0.12.x) PyTree checkpoints slice by slice, straight through tensorstore.

Orbax's own `save` needs every array in memory; a stacked [layers, ...] parameter of a 72B model
does not fit. So the converter writes the layout Orbax's PyTreeCheckpointHandler produces with
`use_ocdbt=False` (studied on orbax-checkpoint 0.12.8):

    params/_METADATA                   tree structure: key path -> {"value_type": "jax.Array", ...}
    params/_CHECKPOINT_METADATA        handler name and timestamps
    params/<dotted.key.path>/.zarray   one zarr v2 array per leaf (zstd level 1, as Orbax writes)
    params/<dotted.key.path>/<chunk>   chunk files

Chunks hold one layer of a stacked parameter (or a block of vocabulary rows), so each HF tensor is
written into its own chunks and Orbax's standard restore, which reads chunk shapes from `.zarray`,
restores onto any sharding. Readers open either this layout or Orbax's default OCDBT one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorstore as ts

_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"
_KEY_TYPE_DICT = 2  # orbax tree_metadata key_type for dict keys
_ZSTD = {"id": "zstd", "level": 1}


def param_name(key: Sequence[str]) -> str:
    return ".".join(key)


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name  # "float32", "bfloat16", "float16": tensorstore's names


class StreamingOrbaxWriter:
    """Create arrays, write slices, then `finalize()` to atomically publish `directory`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._tmp = self.directory.with_name(self.directory.name + ".partial")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        self._arrays: dict[tuple[str, ...], ts.TensorStore] = {}
        self._started = time.time_ns()

    def create(self, key: Sequence[str], shape: Sequence[int], dtype: np.dtype,
               chunks: Sequence[int]) -> None:
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(self._tmp / param_name(key))},
            "dtype": _dtype_name(dtype),
            "metadata": {"shape": list(shape), "chunks": list(chunks), "compressor": _ZSTD},
        }
        self._arrays[tuple(key)] = ts.open(spec, create=True).result()

    def write(self, key: Sequence[str], index: tuple, value: np.ndarray) -> None:
        """Write `value` at `array[index]` (e.g. index=(layer,) or (slice(r0, r1),))."""
        self._arrays[tuple(key)][index].write(value).result()

    def finalize(self) -> None:
        tree = {}
        for key, arr in self._arrays.items():
            tree[str(tuple(key))] = {
                "key_metadata": [{"key": k, "key_type": _KEY_TYPE_DICT} for k in key],
                "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False,
                                   "write_shape": list(arr.shape)},
            }
        meta = {"tree_metadata": tree, "use_ocdbt": False, "use_zarr3": False,
                "store_array_data_equal_to_fill_value": True, "custom_metadata": None}
        (self._tmp / "_METADATA").write_text(json.dumps(meta))
        ckpt_meta = {"item_handlers": _HANDLER, "metrics": {}, "performance_metrics": {},
                     "init_timestamp_nsecs": self._started,
                     "commit_timestamp_nsecs": time.time_ns(), "custom_metadata": {}}
        (self._tmp / "_CHECKPOINT_METADATA").write_text(json.dumps(ckpt_meta))
        self._arrays.clear()
        if self.directory.exists():
            shutil.rmtree(self.directory)
        os.replace(self._tmp, self.directory)

    def abort(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)


class OrbaxArrayReader:
    """Open the leaves of an Orbax PyTree checkpoint (OCDBT or not) for sliced reads."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta_file = self.directory / "_METADATA"
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.directory}: not an Orbax PyTree checkpoint "
                                    "(no _METADATA)")
        meta = json.loads(meta_file.read_text())
        self.use_ocdbt = bool(meta.get("use_ocdbt", False))
        self.use_zarr3 = bool(meta.get("use_zarr3", False))
        self.keys = [tuple(k["key"] for k in v["key_metadata"])
                     for v in meta["tree_metadata"].values()]

    def open(self, key: Sequence[str]) -> ts.TensorStore:
        name = param_name(key)
        if self.use_ocdbt:
            kvstore = {"driver": "ocdbt", "base": f"file://{self.directory.resolve()}/",
                       "path": name}
        else:
            kvstore = {"driver": "file", "path": str(self.directory / name)}
        driver = "zarr3" if self.use_zarr3 else "zarr"
        return ts.open({"driver": driver, "kvstore": kvstore}, open=True, read=True).result()
