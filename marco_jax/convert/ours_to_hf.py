"""Our parameters -> a Hugging Face Qwen2 directory (`config.json` + safetensors shards).

`write_hf_checkpoint` reads one layer slice (or one block of vocabulary rows) at a time from the
Orbax arrays and appends it to the safetensors file being written, so peak host memory is about one
HF tensor. The stored dtype is kept unless asked otherwise, so import followed by export is
bit-exact. Sources: a converted checkpoint (`export_orbax_to_hf`, local or gs://) or a training
run's train state (`marco_jax.convert.from_run`). The HF directory is written locally.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tensorstore as ts

from marco_jax.checkpoint.params import PARAMS_DIR, check_param_shapes, read_model_config
from marco_jax.checkpoint.streaming import OrbaxArrayReader
from marco_jax.convert.hf_source import SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from marco_jax.convert.mapping import VOCAB_BLOCK_BYTES, TensorRule, expected_hf_tensors, rule_for
from marco_jax.convert.safetensors_io import SafetensorsWriter
from marco_jax.model.config import Qwen2Config
from marco_jax.paths import is_remote

log = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as transformers' max_shard_size); 'GiB' binary."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"size {size!r}: expected e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def hf_config_dict(config, dtype: np.dtype) -> dict:
    hf = config.to_hf_dict()
    hf["torch_dtype"] = hf["dtype"] = dtype.name
    # transformers>=5 reads RoPE settings from rope_parameters; older versions from rope_theta.
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta}
    return hf


def plan_shards(tensors: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Greedy packing in order, as transformers does; a tensor above the limit gets its own."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in tensors:
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def export_orbax_to_hf(checkpoint: str | os.PathLike, out_dir: str | Path, *,
                       max_shard_size: str | int = "5GB", dtype: str | None = None,
                       overwrite: bool = False) -> list[Path]:
    """Converted checkpoint (local or gs://) -> `out_dir/config.json` and the safetensors
    shard(s); returns the written files."""
    config = read_model_config(checkpoint)
    params_dir = f"{str(checkpoint).rstrip('/')}/{PARAMS_DIR}"
    arrays = OrbaxArrayReader(params_dir).open_subtree()
    return write_hf_checkpoint(config, arrays, out_dir, where=f"checkpoint {params_dir}",
                               max_shard_size=max_shard_size, dtype=dtype, overwrite=overwrite)


def write_hf_checkpoint(config: Qwen2Config, arrays: dict[tuple[str, ...], ts.TensorStore],
                        out_dir: str | Path, *, where: str, max_shard_size: str | int = "5GB",
                        dtype: str | None = None, overwrite: bool = False) -> list[Path]:
    """Stream the param arrays (opened tensorstores keyed by param path) into a local HF dir."""
    if is_remote(out_dir):
        raise ValueError(f"{out_dir}: the HF directory is written locally; upload it afterwards "
                         "(e.g. `gcloud storage rsync -r HF_DIR gs://...`)")
    out_dir = Path(out_dir)
    check_param_shapes(config, {k: tuple(a.shape) for k, a in arrays.items()}, where)
    existing = sorted(out_dir.glob("model*.safetensors*")) if out_dir.exists() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {existing[0].name}; pass overwrite=True "
                              "(--overwrite)")
    for f in existing:
        f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    rules = {name: rule_for(name) for name in expected_hf_tensors(config)}
    dtypes = {name: np.dtype(jnp.dtype(dtype or arrays[r.ours].dtype.numpy_dtype))
              for name, (r, _) in rules.items()}
    shapes = {name: r.hf_shape(config) for name, (r, _) in rules.items()}
    nbytes = {n: int(np.prod(shapes[n])) * dtypes[n].itemsize for n in rules}
    shards = plan_shards([(n, nbytes[n]) for n in _hf_order(config, rules)],
                         parse_size(max_shard_size))
    files = [out_dir / (SAFETENSORS_SINGLE if len(shards) == 1 else
                        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
             for i in range(len(shards))]
    for file, names in zip(files, shards, strict=True):
        with SafetensorsWriter(file, [(n, dtypes[n], shapes[n]) for n in names]) as w:
            for name in names:
                rule, layer = rules[name]
                for block in _hf_blocks(arrays[rule.ours], rule, layer, config):
                    w.append(name, block.astype(dtypes[name], copy=False))
        log.info("wrote %s (%d tensors)", file.name, len(names))
    if len(files) > 1:
        weight_map = {n: f.name for f, names in zip(files, shards, strict=True) for n in names}
        index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
        (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    weights_dtype = dtypes["model.embed_tokens.weight"]
    (out_dir / "config.json").write_text(
        json.dumps(hf_config_dict(config, weights_dtype), indent=2) + "\n")
    return [out_dir / "config.json", *files]


def _hf_order(config, rules: dict) -> list[str]:
    """HF's usual order: embedding, layer 0..L-1, final norm, head."""
    def key(name: str) -> tuple:
        _, layer = rules[name]
        if layer is not None:
            return (1, layer, name)
        return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3), 0, name)
    return sorted(rules, key=key)


def _hf_blocks(array, rule: TensorRule, layer: int | None, config):
    """Yield the HF tensor for one rule: whole, or in blocks of vocabulary rows."""
    if rule.ours_vocab_axis is None:
        value = array[layer].read().result() if layer is not None else array.read().result()
        yield rule.to_hf(value, config)
        return
    axis = rule.ours_vocab_axis
    itemsize = np.dtype(array.dtype.numpy_dtype).itemsize
    rows = max(1, VOCAB_BLOCK_BYTES // (config.hidden_size * itemsize))
    for r0 in range(0, config.vocab_size, rows):
        index = (slice(None),) * axis + (slice(r0, min(r0 + rows, config.vocab_size)),)
        yield rule.to_hf(array[index].read().result(), config)
