"""What a stored checkpoint must agree on with the run that restores it, checked before any array
is read: one home for the architecture and parameter-layout comparison."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from marco_jax.checkpoint.params import flat_params
from marco_jax.model.config import RUNTIME_FIELDS, Qwen2Config

# 2: train state saved as separate `params` / `opt_state` items (params-only reads skip moments).
LAYOUT_VERSION = 2
# Runtime fields that change nothing in the stored arrays (param_dtype does, so it stays).
_LAYOUT_FREE = tuple(f for f in RUNTIME_FIELDS if f != "param_dtype")


def architecture(config: Qwen2Config) -> dict[str, Any]:
    """The fields that define the stored arrays (runtime choices excluded, param dtype kept)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _LAYOUT_FREE}


def architecture_mismatches(stored: dict[str, Any], run: Qwen2Config,
                            ignore: tuple[str, ...] = ()) -> list[str]:
    """`field: checkpoint X, run Y` for every architecture field that differs."""
    expected = architecture(run)
    stored = {k: v for k, v in stored.items() if k not in _LAYOUT_FREE}
    return [f"model.{k}: checkpoint {stored.get(k)!r}, run {expected.get(k)!r}"
            for k in sorted(set(stored) | set(expected))
            if k not in ignore and stored.get(k) != expected.get(k)]


def layout_metadata(model_config: Qwen2Config, params: Any,
                    source_names: list[str]) -> dict[str, Any]:
    return {
        "layout_version": LAYOUT_VERSION,
        "layers": "stacked",  # leading `layers` axis on every layer parameter (scan layout)
        "model": architecture(model_config),
        "params": {"/".join(k): [list(np.shape(v)), str(np.dtype(v.dtype))]
                   for k, v in flat_params(params).items()},
        "source_names": list(source_names),
    }


def layout_mismatches(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = [f"{key}: checkpoint {stored.get(key)!r}, run {expected[key]!r}"
                for key in ("layout_version", "layers") if stored.get(key) != expected[key]]
    s_model, e_model = stored.get("model", {}), expected["model"]
    problems += [f"model.{k}: checkpoint {s_model.get(k)!r}, run {e_model.get(k)!r}"
                 for k in sorted(set(s_model) | set(e_model)) if s_model.get(k) != e_model.get(k)]
    s_par, e_par = stored.get("params", {}), expected["params"]
    for k in sorted(set(s_par) | set(e_par)):
        if k not in e_par:
            problems.append(f"param {k}: in the checkpoint, not in the run's model")
        elif k not in s_par:
            problems.append(f"param {k}: missing from the checkpoint")
        elif s_par[k] != e_par[k]:
            problems.append(f"param {k}: checkpoint shape/dtype {s_par[k]}, run {e_par[k]}")
    if stored.get("source_names") != expected["source_names"]:
        problems.append(f"data sources: checkpoint {stored.get('source_names')}, run "
                        f"{expected['source_names']} (per-source metrics would be mislabelled)")
    return problems
