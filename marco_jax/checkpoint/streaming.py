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
restores onto any sharding. Orbax's public API has no way to save an array that is never whole in
memory, hence this writer; `tests/test_checkpoint_streaming.py` pins its metadata to Orbax's own
for the same tree, so an Orbax upgrade that changes the format fails a test instead of a restore.
Readers open either this layout or Orbax's default OCDBT one (e.g. a training run's params).
Directories may be local or gs:// (tensorstore's `gcs` kvstore).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np
import tensorstore as ts
from etils import epath

from marco_jax.paths import is_remote

_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"
_KEY_TYPE_DICT = 2  # orbax tree_metadata key_type for dict keys
_ZSTD = {"id": "zstd", "level": 1}


def param_name(key: Sequence[str]) -> str:
    return ".".join(key)


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name  # "float32", "bfloat16", "float16": tensorstore's names


def kvstore_spec(path: str | os.PathLike) -> dict:
    """tensorstore kvstore spec for a local path or a gs://bucket/path URL."""
    path = str(path)
    if not is_remote(path):
        return {"driver": "file", "path": os.path.abspath(path) + ("/" if path.endswith("/")
                                                                   else "")}
    if not path.startswith("gs://"):
        raise ValueError(f"{path}: only local paths and gs:// URLs are supported")
    bucket, _, key = path[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"{path}: no bucket name after gs://")
    return {"driver": "gcs", "bucket": bucket, "path": key}


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def array_spec(directory: str | os.PathLike, key: Sequence[str], *, use_ocdbt: bool,
               use_zarr3: bool) -> dict:
    """The tensorstore spec of leaf `key` of the Orbax checkpoint in `directory`."""
    name = param_name(key)
    if use_ocdbt:
        kvstore = {"driver": "ocdbt", "base": kvstore_spec(_join(str(directory), "")),
                   "path": name}
    else:
        kvstore = kvstore_spec(_join(str(directory), name))
    return {"driver": "zarr3" if use_zarr3 else "zarr", "kvstore": kvstore}


class StreamingOrbaxWriter:
    """Create arrays, write slices, then `finalize()` to publish `directory`.

    Local: written under `<directory>.partial` and renamed into place (atomic). gs:// (no rename
    there): written in place with `_METADATA` last, so an interrupted upload is no checkpoint.
    """

    def __init__(self, directory: str | os.PathLike):
        self.remote = is_remote(directory)
        self.directory = str(directory) if self.remote else os.path.abspath(directory)
        self._tmp = self.directory if self.remote else self.directory + ".partial"
        tmp = epath.Path(self._tmp)
        if tmp.exists():
            tmp.rmtree()
        tmp.mkdir(parents=True)
        self._arrays: dict[tuple[str, ...], ts.TensorStore] = {}
        self._started = time.time_ns()

    def create(self, key: Sequence[str], shape: Sequence[int], dtype: np.dtype,
               chunks: Sequence[int]) -> None:
        spec = {
            "driver": "zarr",
            "kvstore": kvstore_spec(_join(self._tmp, param_name(key))),
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
        ckpt_meta = {"item_handlers": _HANDLER, "metrics": {}, "performance_metrics": {},
                     "init_timestamp_nsecs": self._started,
                     "commit_timestamp_nsecs": time.time_ns(), "custom_metadata": {}}
        tmp = epath.Path(self._tmp)
        (tmp / "_CHECKPOINT_METADATA").write_text(json.dumps(ckpt_meta))
        (tmp / "_METADATA").write_text(json.dumps(meta))
        self._arrays.clear()
        if not self.remote:
            if os.path.exists(self.directory):
                shutil.rmtree(self.directory)
            os.replace(self._tmp, self.directory)

    def abort(self) -> None:
        self._arrays.clear()
        tmp = epath.Path(self._tmp)
        if tmp.exists():
            tmp.rmtree()


class OrbaxArrayReader:
    """Open the leaves of an Orbax PyTree checkpoint (OCDBT or not, local or gs://) for sliced
    reads."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = str(directory) if is_remote(directory) else os.path.abspath(directory)
        meta_file = epath.Path(self.directory) / "_METADATA"
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.directory}: not an Orbax PyTree checkpoint "
                                    "(no _METADATA)")
        meta = json.loads(meta_file.read_text())
        self.use_ocdbt = bool(meta.get("use_ocdbt", False))
        self.use_zarr3 = bool(meta.get("use_zarr3", False))
        # leaves that hold arrays (optimizer states also store None/empty leaves)
        self.keys = [tuple(k["key"] for k in v["key_metadata"])
                     for v in meta["tree_metadata"].values()
                     if not v["value_metadata"].get("skip_deserialize", False)]

    def open(self, key: Sequence[str]) -> ts.TensorStore:
        spec = array_spec(self.directory, key, use_ocdbt=self.use_ocdbt,
                          use_zarr3=self.use_zarr3)
        return ts.open(spec, open=True, read=True).result()

    def open_subtree(self, prefix: Sequence[str] = ()) -> dict[tuple[str, ...], ts.TensorStore]:
        """Every array under `prefix` (e.g. ("params",) of a train state), keyed without it;
        the others (e.g. optimizer moments) are never opened."""
        n = len(prefix)
        return {key[n:]: self.open(key) for key in self.keys if key[:n] == tuple(prefix)}
