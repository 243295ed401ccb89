"""Which objective a config trains (`train.objective`: lm | sft | dpo), built from its sections,
and the abstract batch of that objective for ahead-of-time compilation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from marco_jax.config import Experiment
from marco_jax.data.languages import LANGUAGES
from marco_jax.train.dpo import PAIR_KEYS, REF_KEYS, DPOConfig, DPOObjective
from marco_jax.train.lm import LanguageModeling
from marco_jax.train.sft import SFTObjective


def languages_of(config: Experiment) -> tuple[str, ...]:
    return config.data.languages or LANGUAGES


def objective_for(config: Experiment, source_names: Sequence[str] = ()) -> Any:
    """The objective a config names (`train.objective`)."""
    kind = config.train.objective
    if kind == "sft":
        return SFTObjective(languages_of(config), config.train.loss_chunk)
    if kind == "dpo":
        return DPOObjective(dpo_config(config), config.dpo.pairs_per_row, languages_of(config),
                            config.train.loss_chunk)
    return LanguageModeling(source_names, config.train.loss_chunk)


def dpo_config(config: Experiment) -> DPOConfig:
    d = config.dpo
    return DPOConfig(beta=d.beta, loss=d.loss, label_smoothing=d.label_smoothing,
                     sft_weight=d.sft_weight, reference=d.reference)


def abstract_batch(objective: Any, global_batch: int, seq_len: int, sharding: Any
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract inputs of an objective's step (the AOT tool's batch)."""
    out = {}
    for key in objective.batch_keys:
        per_pair = key in PAIR_KEYS + REF_KEYS + ("pair_language_ids",)
        shape = (global_batch, objective.pairs_per_row) if per_pair else (global_batch, seq_len)
        dtype = jnp.float32 if key in REF_KEYS else jnp.int32
        out[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return out
