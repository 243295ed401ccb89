"""A training run's checkpoint -> a Hugging Face directory or a converted checkpoint.

A run's workdir holds `checkpoints/<step>/{params,opt_state,data,meta}`
(`marco_jax.checkpoint.run`). Only the `params` item is opened, its arrays streamed one layer (or
one vocabulary block) at a time, so neither the optimizer state nor a whole parameter is ever in
memory, whatever the model size. Workdirs may be local or gs://.
"""

from __future__ import annotations

import logging
import os
from itertools import product
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from etils import epath

from marco_jax.checkpoint.params import PARAMS_DIR, check_param_shapes, write_model_config
from marco_jax.checkpoint.run import RunStep, open_run
from marco_jax.checkpoint.streaming import OrbaxArrayReader, StreamingOrbaxWriter
from marco_jax.convert.hf_to_ours import converted_chunks
from marco_jax.convert.ours_to_hf import write_hf_checkpoint
from marco_jax.model.config import Qwen2Config

log = logging.getLogger(__name__)


def open_params(run: RunStep) -> dict[tuple[str, ...], ts.TensorStore]:
    """The run step's param arrays, unopened for reading (no optimizer array is touched)."""
    arrays = OrbaxArrayReader(run.params_dir).open_subtree(())
    check_param_shapes(run.config, {k: tuple(a.shape) for k, a in arrays.items()},
                       run.params_dir)
    return arrays


def export_run_to_hf(workdir: str | os.PathLike, out_dir: str | Path, *, step: int | None = None,
                     max_shard_size: str | int = "5GB", dtype: str | None = None,
                     overwrite: bool = False) -> tuple[RunStep, list[Path]]:
    """Write the run's params at `step` (default latest) as a HF Qwen2 directory."""
    run = open_run(workdir, step)
    files = write_hf_checkpoint(run.config, open_params(run), out_dir,
                                where=run.params_dir, max_shard_size=max_shard_size,
                                dtype=dtype, overwrite=overwrite)
    return run, files


def export_run_to_orbax(workdir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        step: int | None = None, dtype: str | None = None,
                        overwrite: bool = False) -> tuple[RunStep, Qwen2Config]:
    """Write the run's params at `step` as a converted checkpoint (model_config.json + params/),
    the input of `load_model`, `generate --checkpoint`, `train.init_from` and `orbax-to-hf`."""
    run = open_run(workdir, step)
    arrays = open_params(run)
    stored = {np.dtype(a.dtype.numpy_dtype) for a in arrays.values()}
    if dtype is None and len(stored) != 1:
        raise ValueError(f"{run.params_dir}: params mix dtypes {sorted(map(str, stored))}; pass "
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
