"""Train checkpoints: Orbax CheckpointManager with three items per step.

    <workdir>/checkpoints/<step>/state   the TrainState (params + optimizer + step), sharded
                                 /data    the input iterator's position (JSON)
                                 /meta    layout metadata + the experiment config (JSON)

Saves are asynchronous (the device->host copy happens before `save` returns, so the next step may
donate the state), the manager keeps the last `checkpoint.keep`. Restore first reads `meta` and
compares the stored layout with the run's (architecture, vocabulary, stacked-layer layout,
parameter shapes and dtypes), naming every mismatch, before it touches any array. Paths may be
local or gs:// (Orbax goes through etils.epath).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from marco_jax.model.config import RUNTIME_FIELDS, Qwen2Config
from marco_jax.paths import orbax_path

LAYOUT_VERSION = 1
ITEM_NAMES = ("state", "data", "meta")  # one CheckpointManager item each, per step
# Runtime fields that change nothing in the stored arrays (param_dtype does, so it stays).
_LAYOUT_FREE = tuple(f for f in RUNTIME_FIELDS if f != "param_dtype")


def _flat(tree: Any) -> dict[str, Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
            for path, leaf in flat}


def layout_metadata(model_config: Qwen2Config, params: Any,
                    source_names: list[str]) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that restores it."""
    arch = {k: v for k, v in dataclasses.asdict(model_config).items() if k not in _LAYOUT_FREE}
    return {
        "layout_version": LAYOUT_VERSION,
        "layers": "stacked",  # leading `layers` axis on every layer parameter (scan layout)
        "model": arch,
        "params": {k: [list(np.shape(v)), str(np.dtype(v.dtype))]
                   for k, v in _flat(params).items()},
        "source_names": list(source_names),
    }


def layout_mismatches(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("layout_version", "layers"):
        if stored.get(key) != expected[key]:
            problems.append(f"{key}: checkpoint {stored.get(key)!r}, run {expected[key]!r}")
    s_model, e_model = stored.get("model", {}), expected["model"]
    for k in sorted(set(s_model) | set(e_model)):
        if s_model.get(k) != e_model.get(k):
            problems.append(f"model.{k}: checkpoint {s_model.get(k)!r}, run {e_model.get(k)!r}")
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


class Checkpointer:
    """Thin owner of an Orbax CheckpointManager for (state, data position, metadata)."""

    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = orbax_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=ITEM_NAMES)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict, config_json: str,
             force: bool = False) -> bool:
        meta = dict(meta, step=step, config=json.loads(config_json))
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, abstract_state: Any,
                expected_meta: dict) -> tuple[Any, dict, dict]:
        """(state, data iterator state, stored meta) after validating the layout."""
        where = self.directory / str(step)
        stored = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        problems = layout_mismatches(stored, expected_meta)
        if problems:
            raise ValueError(f"checkpoint {where} does not fit this run:\n  "
                             + "\n  ".join(problems))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"], stored

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
