"""SFT and DPO runs on the one loop: the config's data become step-addressable batches
(`marco_jax.data.post_training`), the objective comes from the config, and DPO's reference
log-probs are computed once before training (one model in memory) unless the config asks for a
frozen reference copy on the fly or none.

    train_sft(experiment, workdir)    # python -m marco_jax.sft
    train_dpo(experiment, workdir)    # python -m marco_jax.dpo
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec

from marco_jax.checkpoint.load import load_model, params_location
from marco_jax.config import Experiment, to_experiment
from marco_jax.data.post_training import (
    EpochBatches,
    StepIterator,
    dpo_batches,
    read_dpo_pairs,
    sft_batches,
)
from marco_jax.data.sources import expand_pattern
from marco_jax.data.tasks import SAMPLE_DATA_DIR
from marco_jax.model.config import RUNTIME_FIELDS, from_experiment
from marco_jax.model.init import abstract_model
from marco_jax.parallel import build_mesh, pure_dict_shardings
from marco_jax.train.loop import train
from marco_jax.train.objectives import languages_of, objective_for
from marco_jax.train.plots import preference_curves
from marco_jax.train.reference_logps import make_sharded_logps_fn, precomputed_reference_logps

SHIPPED_SFT = os.path.join(SAMPLE_DATA_DIR, "sft", "*.jsonl")


def _require_files(key: str, patterns: Sequence[str]) -> list[str]:
    """`patterns`, or FileNotFoundError naming the config key of one that matches no file."""
    for pattern in patterns:
        if not expand_pattern(pattern):
            raise FileNotFoundError(f"{key}: no files match {pattern!r}")
    return list(patterns)


def _sft_files(config: Experiment) -> list[str]:
    return _require_files("data.sft_files", config.data.sft_files) or [SHIPPED_SFT]


def _steps(config: Experiment, batches: EpochBatches) -> Experiment:
    """train.steps from train.epochs when set (the recipes count epochs)."""
    if config.train.epochs <= 0:
        return config
    steps = sum(batches.batches_in_epoch(e) for e in range(config.train.epochs))
    return config.replace(train=dataclasses.replace(config.train, steps=steps))


def train_sft(config: Any, workdir: str, *, progress: bool | None = None,
              devices: list[Any] | None = None) -> dict[str, Any]:
    config = to_experiment(config)
    d = config.data
    langs = languages_of(config)
    batches, counters = sft_batches(_sft_files(config), langs, d.seq_len, d.global_batch_size,
                                    d.seed, d.on_bad_record, d.truncation)
    held = None
    if d.eval_files:
        held, _ = sft_batches(_require_files("data.eval_files", d.eval_files), langs, d.seq_len,
                              d.global_batch_size, d.seed, d.on_bad_record, d.truncation)
    config = _steps(config, batches)

    def iterators(c, p, n):
        train_it = StepIterator(batches, p, n, {"sft": counters})
        return train_it, (StepIterator(held, p, n) if held is not None else None)

    return train(config, workdir, objective=objective_for(config), iterators=iterators,
                 progress=progress, devices=devices)


def reference_model_fingerprint(config: Experiment) -> str:
    """What the reference model is: the init checkpoint (path, and its step for a run) plus
    the architecture; a random init adds its seed."""
    src = config.train.init_from
    if src:
        model_cfg, params_dir = params_location(src)
        what = {"init_from": src, "params": params_dir}
    else:
        model_cfg, what = from_experiment(config.model), {"seed": config.train.seed}
    payload = json.dumps({**what, "model": dataclasses.asdict(model_cfg)}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def train_dpo(config: Any, workdir: str, *, progress: bool | None = None,
              devices: list[Any] | None = None) -> dict[str, Any]:
    config = to_experiment(config)
    d, p = config.data, config.dpo
    if not p.train_file:
        raise ValueError("dpo.train_file is empty: name a preference-pair file (jsonl[.gz])")
    if p.reference != "none" and not config.train.init_from:
        raise ValueError(f"dpo.reference={p.reference!r} needs train.init_from (the SFT model "
                         "the policy starts from and is compared against)")
    langs = languages_of(config)
    _require_files("dpo.train_file", [p.train_file])
    pairs, counters = read_dpo_pairs(p.train_file, d.seq_len, d.on_bad_record, p.truncation)
    ref = None
    if p.reference == "precomputed":
        ref = _reference_logps(config, pairs, workdir, devices)
    batches = dpo_batches(pairs, langs, d.seq_len, p.pairs_per_row, d.global_batch_size, d.seed,
                          ref)
    config = _steps(config, batches)

    def iterators(c, pi, n):
        return StepIterator(batches, pi, n, {"dpo": counters}), None

    summary = train(config, workdir, objective=objective_for(config), iterators=iterators,
                    progress=progress, devices=devices)
    if jax.process_index() == 0:
        summary["preference_curves"] = preference_curves(workdir)
    return summary


def _reference_logps(config: Experiment, pairs: Sequence[Any], workdir: str,
                     devices: list[Any] | None):
    """[N, 2] reference log-probs of every pair, computed once with the init model sharded over
    the run's mesh (then freed), or read back from an earlier run's file."""
    d, p = config.data, config.dpo
    mesh = build_mesh(config.mesh.ici, config.mesh.dcn, devices)
    settings = {"seq_len": d.seq_len, "on_bad_record": d.on_bad_record,
                "truncation": p.truncation, "pairs_per_row": p.pairs_per_row}
    model_fp = reference_model_fingerprint(config)
    # Beside the data, except for the package's own sample data (kept out of the source tree).
    inside_package = os.path.abspath(p.train_file).startswith(os.path.abspath(SAMPLE_DATA_DIR))
    out_dir = p.reference_logps_dir or (workdir if inside_package else None)
    model_cfg = from_experiment(config.model)
    shardings = pure_dict_shardings(abstract_model(model_cfg)[1], mesh)
    model = load_model(config.train.init_from, shardings,
                       **{k: getattr(model_cfg, k) for k in RUNTIME_FIELDS})
    logps_fn = make_sharded_logps_fn(model, p.pairs_per_row, mesh,
                                     PartitionSpec(("data", "fsdp")), config.train.loss_chunk)
    rows = d.global_batch_size // jax.process_count()
    logps, _, _ = precomputed_reference_logps(
        logps_fn, pairs, p.train_file, settings, model_fp, d.seq_len, p.pairs_per_row, rows,
        out_dir, jax.process_index(), jax.process_count())
    del model, logps_fn
    return logps

