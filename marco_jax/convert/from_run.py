"""A training run's checkpoint -> a Hugging Face directory or a converted checkpoint.

A run's workdir holds `checkpoints/<step>/{state,data,meta}` (`marco_jax.train.checkpointing`):
`state` is the whole TrainState (params + optimizer moments) in Orbax's OCDBT layout, `meta` the
model architecture and param layout. Only the `params/...` arrays of `state` are opened, and they
are streamed one layer (or one vocabulary block) at a time, so neither the optimizer state nor a
whole parameter is ever in memory, whatever the model size. Workdirs may be local or gs://.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from itertools import product
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from marco_jax.convert.checkpoint import (
    PARAMS_DIR,
    check_param_shapes,
    write_model_config,
)
from marco_jax.convert.hf_to_ours import converted_chunks
from marco_jax.convert.orbax_layout import OrbaxArrayReader, StreamingOrbaxWriter
from marco_jax.convert.ours_to_hf import write_hf_checkpoint
from marco_jax.model.config import Qwen2Config
from marco_jax.train.checkpointing import ITEM_NAMES, LAYOUT_VERSION

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """One step of a training run: its model config and its (unopened) param arrays."""

    workdir: str
    step: int
    config: Qwen2Config
    state_dir: str

    def open_params(self) -> dict[tuple[str, ...], ts.TensorStore]:
        arrays = OrbaxArrayReader(self.state_dir).open_subtree(("params",))
        check_param_shapes(self.config, {k: tuple(a.shape) for k, a in arrays.items()},
                           f"{self.state_dir} (params)")
        return arrays


def open_run(workdir: str | os.PathLike, step: int | None = None) -> RunCheckpoint:
    """Find step `step` (default: the latest) of the run in `workdir` and read its model config."""
    workdir = str(workdir)
    directory = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
    if not (directory / "checkpoints").exists():
        raise FileNotFoundError(f"--workdir {workdir}: no checkpoints/ (not a training workdir)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    manager = ocp.CheckpointManager(directory / "checkpoints", options=options,
                                    item_names=ITEM_NAMES)
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{directory / 'checkpoints'}: holds no finished checkpoint")
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise ValueError(f"{directory / 'checkpoints'}: no step {step}; have "
                             f"{sorted(steps)}")
        meta = manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    where = directory / "checkpoints" / str(step)
    return RunCheckpoint(str(workdir), int(step), run_model_config(meta, str(where)),
                         str(where / "state"))


def run_model_config(meta: dict, where: str) -> Qwen2Config:
    """The Qwen2Config a train checkpoint's `meta` item describes (runtime fields default)."""
    if meta.get("layout_version") != LAYOUT_VERSION or meta.get("layers") != "stacked":
        raise ValueError(f"{where}/meta: layout_version {meta.get('layout_version')!r}, layers "
                         f"{meta.get('layers')!r}; this code reads version {LAYOUT_VERSION}, "
                         "stacked")
    fields = {f.name for f in dataclasses.fields(Qwen2Config)}
    unknown = sorted(set(meta.get("model", {})) - fields)
    if unknown:
        raise ValueError(f"{where}/meta: unknown model fields {unknown}")
    return Qwen2Config(**meta["model"])


def export_run_to_hf(workdir: str | os.PathLike, out_dir: str | Path, *, step: int | None = None,
                     max_shard_size: str | int = "5GB", dtype: str | None = None,
                     overwrite: bool = False) -> tuple[RunCheckpoint, list[Path]]:
    """Write the run's params at `step` (default latest) as a HF Qwen2 directory."""
    run = open_run(workdir, step)
    files = write_hf_checkpoint(run.config, run.open_params(), out_dir,
                                where=f"{run.state_dir} (params)", max_shard_size=max_shard_size,
                                dtype=dtype, overwrite=overwrite)
    return run, files


def export_run_to_orbax(workdir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        step: int | None = None, dtype: str | None = None,
                        overwrite: bool = False) -> tuple[RunCheckpoint, Qwen2Config]:
    """Write the run's params at `step` as a converted checkpoint (model_config.json + params/),
    the input of `load_model`, `generate --checkpoint`, `train.init_from` and `orbax-to-hf`."""
    run = open_run(workdir, step)
    arrays = run.open_params()
    stored = {np.dtype(a.dtype.numpy_dtype) for a in arrays.values()}
    if dtype is None and len(stored) != 1:
        raise ValueError(f"{run.state_dir}: params mix dtypes {sorted(map(str, stored))}; pass "
                         "dtype= (--dtype)")
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype else stored.pop()
    config = run.config.replace(param_dtype=out_dtype.name)
    params_dir = epath.Path(out_dir) / PARAMS_DIR
    if params_dir.exists() and not overwrite:
        raise FileExistsError(f"{params_dir} exists; pass overwrite=True (--overwrite)")
    writer = StreamingOrbaxWriter(str(params_dir))
    try:
        for key, array in arrays.items():
            shape = tuple(array.shape)
            chunks = converted_chunks(config, key, shape, out_dtype)
            writer.create(key, shape, out_dtype, chunks)
            for index in _chunk_indices(shape, chunks):
                block = array[index].read().result()
                writer.write(key, index, block.astype(out_dtype, copy=False))
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    write_model_config(out_dir, config)
    log.info("wrote %s step %d -> %s", run.workdir, run.step, out_dir)
    return run, config


def _chunk_indices(shape: tuple[int, ...], chunks: list[int]):
    """Index tuples covering the array chunk by chunk (one layer / one vocab block at a time)."""
    starts = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    for corner in product(*starts):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(corner, chunks, shape, strict=True))
