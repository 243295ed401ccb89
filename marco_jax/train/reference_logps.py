"""Precomputed reference log-probs for DPO: one sharded pass over the whole preference set.

With `dpo.reference="precomputed"` the frozen reference model is run once, before training:
every pair's chosen and rejected answer log-probs are written beside the data as
`<data file>.ref_logps.<fp16>.npz` (or into `out_dir`), where fp16 is the start of a
fingerprint of (data files' bytes, encoding settings, reference model). A restart or a second
epoch finds the file and reuses it; a different model or data set has a different fingerprint,
so a different file, and a file whose stored fingerprint does not match is refused. Training then
holds one model's parameters, not two.

Multi-host: process p takes pairs p, p + n, p + 2n, ... (n processes), packs them into rows and
feeds them as its part of each global batch (the same number of batches everywhere: every
process packs every share to count them); each process reads back the rows it fed, and a
process all-gather combines the shares. Only process 0 writes the file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from marco_jax.data.preference import PAIR_PAD, EncodedPair, pack_pair_rows
from marco_jax.data.row_packing import pad_rows
from marco_jax.data.sources import expand_pattern, read_bytes
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.train.dpo import DPOConfig, DPOObjective

FORMAT_VERSION = 1
# (local rows) -> per pair slot (chosen, rejected) log-probs [rows, P] each, host-local numpy.
LogpsFn = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def params_digest(params: Any) -> str:
    """A cheap fingerprint of model parameters: per leaf its path, shape, dtype and three
    reductions (sum, sum of squares, a position-weighted sum), rounded to 6 significant digits so
    a different device layout (another reduction order) gives the same digest."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        x = jnp.asarray(leaf, jnp.float32).reshape(-1)
        ramp = jnp.sin(jnp.arange(x.size, dtype=jnp.float32))
        stats = jax.device_get(jnp.stack([jnp.sum(x), jnp.sum(x * x), jnp.sum(x * ramp)]))
        h.update(f"{jax.tree_util.keystr(path)}|{leaf.shape}|{leaf.dtype}|".encode())
        h.update(",".join(f"{float(v):.6g}" for v in stats).encode())
    return h.hexdigest()


def reference_fingerprint(data_pattern: str, settings: Mapping[str, Any],
                          model_fingerprint: str) -> str:
    """sha256 over the data files (names and bytes), the encoding settings (max_length,
    truncation, on_bad_record, ...) and the reference model's fingerprint."""
    h = hashlib.sha256(f"marco_jax.ref_logps.v{FORMAT_VERSION}".encode())
    files = expand_pattern(data_pattern)
    if not files:
        raise FileNotFoundError(f"no files match preference data {data_pattern!r}")
    for path in files:
        h.update(path.rsplit("/", 1)[-1].encode())
        h.update(hashlib.sha256(read_bytes(path)).digest())
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    h.update(model_fingerprint.encode())
    return h.hexdigest()


def reference_logps_path(data_pattern: str, fingerprint: str, out_dir: str | None = None) -> str:
    """Beside the data (`<file>.ref_logps.<fp16>.npz`; a glob: in its first file's folder), or in
    `out_dir` when given (e.g. the run's workdir when the data folder is read-only)."""
    first = expand_pattern(data_pattern)[0]
    folder, name = first.rsplit("/", 1) if "/" in first else (".", first)
    if any(c in data_pattern for c in "*?["):
        name = "preference_set"
    return f"{(out_dir or folder).rstrip('/')}/{name}.ref_logps.{fingerprint[:16]}.npz"


def save_reference_logps(path: str, logps: np.ndarray, fingerprint: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, logps=logps.astype(np.float32), fingerprint=np.asarray(fingerprint),
             version=np.asarray(FORMAT_VERSION))
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / (out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.rename(out)  # readers never see a half-written file


def load_reference_logps(path: str, fingerprint: str, num_pairs: int) -> np.ndarray:
    """The stored [num_pairs, 2] (chosen, rejected) log-probs; refuses another fingerprint."""
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
        stored, logps = str(f["fingerprint"]), f["logps"]
    if stored != fingerprint:
        raise ValueError(f"{path}: reference log-probs were computed for another data set or "
                         f"reference model (fingerprint {stored[:16]}, expected "
                         f"{fingerprint[:16]}); delete it or point dpo.reference_logps elsewhere")
    if logps.shape != (num_pairs, 2):
        raise ValueError(f"{path}: holds {logps.shape[0]} pairs, the data set has {num_pairs}")
    return logps


def _jitted_logps(model: Qwen2ForCausalLM, pairs_per_row: int, loss_chunk: int):
    """(keys a batch needs, jitted `batch -> (chosen, rejected)` with `model`'s params bound)."""
    probe = DPOObjective(DPOConfig(reference="none"), pairs_per_row, loss_chunk=loss_chunk)
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, batch):
        out = probe.sequence_logps(nnx.merge(graphdef, params), batch)
        return out["chosen"], out["rejected"]
    return probe.batch_keys, lambda batch: run(params, batch)


def make_logps_fn(model: Qwen2ForCausalLM, pairs_per_row: int, loss_chunk: int = 0) -> LogpsFn:
    """Single-process: the jitted sequence log-probs of `model` on host rows."""
    keys, run = _jitted_logps(model, pairs_per_row, loss_chunk)

    def fn(rows):
        chosen, rejected = run({k: jnp.asarray(rows[k]) for k in keys})
        return np.asarray(chosen), np.asarray(rejected)
    return fn


def _share_rows(pairs: Sequence[EncodedPair], p: int, n: int, seq_len: int,
                pairs_per_row: int) -> dict[str, np.ndarray]:
    """Process p's pairs (p, p + n, ...) packed into rows (zero rows when it has none)."""
    return pack_pair_rows([pair for pair in pairs if pair.pair_id % n == p], seq_len,
                          pairs_per_row)


def make_sharded_logps_fn(model: Qwen2ForCausalLM, pairs_per_row: int, mesh: Mesh,
                          batch_spec: PartitionSpec, loss_chunk: int = 0) -> LogpsFn:
    """Multi-host: each process passes its local rows; they become its part of a global batch
    sharded by `batch_spec` over `mesh` (the model placed as the caller sharded it), and the
    rows it fed come back to it."""
    keys, run = _jitted_logps(model, pairs_per_row, loss_chunk)

    def fn(rows):
        local = {k: np.asarray(rows[k]) for k in keys}
        batch = multihost_utils.host_local_array_to_global_array(local, mesh, batch_spec)
        out = run(batch)
        chosen, rejected = multihost_utils.global_array_to_host_local_array(out, mesh,
                                                                           batch_spec)
        return np.asarray(chosen), np.asarray(rejected)
    return fn


def compute_reference_logps(logps_fn: LogpsFn, pairs: Sequence[EncodedPair], seq_len: int,
                            pairs_per_row: int, rows_per_batch: int, process_index: int = 0,
                            process_count: int = 1,
                            gather: Callable[[np.ndarray], np.ndarray] | None = None
                            ) -> np.ndarray:
    """[len(pairs), 2] reference log-probs (pair_id = row index). `rows_per_batch` rows per
    process per call of `logps_fn`; `gather` stacks every process's [N, 2] array (NaN where not
    computed) into [process_count, N, 2] (default: jax's process_allgather)."""
    if [p.pair_id for p in pairs] != list(range(len(pairs))):
        raise ValueError("pair ids must be 0..N-1 in order (read_preference_pairs numbers them)")
    counts = []
    for p in range(process_count):  # every process's share, to agree on the batch count
        rows = _share_rows(pairs, p, process_count, seq_len, pairs_per_row)
        counts.append(-(-len(rows["pair_ids"]) // rows_per_batch))
        if p == process_index:
            local = rows
    num_batches = max(counts)
    local = pad_rows(local, rows_per_batch, PAIR_PAD)
    out = np.full((len(pairs), 2), np.nan, np.float64)
    for b in range(num_batches):
        lo = b * rows_per_batch
        batch = {k: v[lo:lo + rows_per_batch] for k, v in local.items()}
        if len(batch["pair_ids"]) < rows_per_batch:  # this share ran out: padding rows only
            batch = {k: np.zeros((rows_per_batch, *v.shape[1:]), v.dtype)
                     for k, v in local.items()}
            batch["pair_ids"][:] = -1
        chosen, rejected = logps_fn(batch)
        ids = batch["pair_ids"]
        out[ids[ids >= 0], 0] = chosen[ids >= 0]
        out[ids[ids >= 0], 1] = rejected[ids >= 0]
    if process_count > 1:
        stacked = np.asarray((gather or multihost_utils.process_allgather)(out))
        out = np.where(np.isnan(stacked), 0.0, stacked).sum(0)
        missing = np.isnan(stacked).all(0)
        if missing.any():
            raise RuntimeError(f"reference log-probs missing for {int(missing.any(1).sum())} "
                               f"pairs after the gather")
    elif np.isnan(out).any():
        raise RuntimeError("reference log-probs missing for some pairs")
    return out.astype(np.float32)


def precomputed_reference_logps(logps_fn: LogpsFn, pairs: Sequence[EncodedPair],
                                data_pattern: str, settings: Mapping[str, Any],
                                model_fingerprint: str, seq_len: int, pairs_per_row: int,
                                rows_per_batch: int, out_dir: str | None = None,
                                process_index: int = 0, process_count: int = 1,
                                gather: Callable[[np.ndarray], np.ndarray] | None = None
                                ) -> tuple[np.ndarray, str, bool]:
    """(logps [N, 2], file, reused): loads the file for this fingerprint if it exists, else
    computes (sharded) and writes it (process 0)."""
    fp = reference_fingerprint(data_pattern, settings, model_fingerprint)
    path = reference_logps_path(data_pattern, fp, out_dir)
    if epath.Path(path).exists():
        return load_reference_logps(path, fp, len(pairs)), path, True
    logps = compute_reference_logps(logps_fn, pairs, seq_len, pairs_per_row, rows_per_batch,
                                    process_index, process_count, gather)
    if process_index == 0:
        save_reference_logps(path, logps, fp)
    return logps, path, False
