"""A training run's checkpoints: an Orbax CheckpointManager with four items per step.

    <workdir>/checkpoints/<step>/params     the parameters (pure-dict tree), sharded
                                /opt_state  the optimizer state, sharded like the params
                                /data       the input iterator's position (JSON)
                                /meta       layout metadata, the step and the config (JSON)

Params and optimizer state are separate items so that starting a new stage from a run, exporting
it or evaluating it reads the params only (at 72B: ~290 GB instead of ~860 GB). Saves are
asynchronous (the device->host copy happens before `save` returns, so the next step may donate
the state); errors of a background save are raised by `check_for_errors()`, which the loop calls
at every step boundary. Restore reads `meta` first and compares the stored layout with the run's,
naming every mismatch, before it touches any array; a step that cannot be read (missing or
truncated files) is skipped with a logged reason and the newest readable step is used instead --
it is never deleted. Paths may be local or gs://.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from marco_jax.checkpoint.layout import LAYOUT_VERSION, layout_mismatches
from marco_jax.checkpoint.params import PARAMS_DIR, model_config_from_dict, quiet_orbax
from marco_jax.model.config import Qwen2Config
from marco_jax.paths import orbax_path

log = logging.getLogger(__name__)

ITEM_NAMES = (PARAMS_DIR, "opt_state", "data", "meta")


def run_checkpoints_dir(workdir: Any) -> epath.Path:
    """Where a training run keeps its steps."""
    return orbax_path(workdir) / "checkpoints"


def is_run_workdir(path: Any) -> bool:
    """Whether `path` is a training run's workdir (it has a checkpoints/ directory)."""
    return run_checkpoints_dir(path).exists()


class CheckpointLayoutError(ValueError):
    """A readable checkpoint that does not fit the run (a config problem, not corruption)."""


def _manager(directory: Any, keep: int | None = None, async_save: bool = True,
             read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, save_interval_steps=1 if not read_only else 0)
    return ocp.CheckpointManager(directory, options=options, item_names=ITEM_NAMES)


class RunCheckpointer:
    """Owner of a run's CheckpointManager: save, validated restore with fallback, close."""

    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = run_checkpoints_dir(workdir)
        self.manager = _manager(self.directory, keep, async_save)
        self.skipped: list[dict[str, Any]] = []  # steps passed over at restore, with reasons

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, meta: dict,
             config: dict, force: bool = False) -> bool:
        meta = dict(meta, step=step, config=config)
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

    def check_for_errors(self) -> None:
        """Raise the error of a finished background save, if any."""
        self.manager.check_for_errors()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any,
                       expected_meta: dict) -> tuple[int, Any, Any, dict] | None:
        """(step, params, opt_state, data state) of the newest step that reads back whole and
        fits the run, or None when no step exists. A step whose files are missing or corrupt is
        logged and skipped (`self.skipped`); a readable step that does not fit the run raises
        CheckpointLayoutError (a config mistake must not silently fall back)."""
        for step in reversed(self.all_steps()):
            restored = self._restore_step(step, abstract_params, abstract_opt_state,
                                          expected_meta)
            if restored is not None:
                return restored
            _discard_abandoned_reads()  # set aside; no exception frame holds the reads now
        return None

    def _restore_step(self, step: int, abstract_params: Any, abstract_opt_state: Any,
                      expected_meta: dict) -> tuple[int, Any, Any, dict] | None:
        """`restore_latest` for one step: None when it is unreadable (set aside)."""
        try:
            stored = self.read_meta(step)
        except Exception as e:  # noqa: BLE001 - any read failure means "unreadable step"
            self._skip(step, f"meta unreadable: {_short(e)}")
            return None
        problems = layout_mismatches(stored, expected_meta)
        if problems:
            raise CheckpointLayoutError(
                f"checkpoint {self.directory / str(step)} does not fit this run:\n  "
                + "\n  ".join(problems))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            self._skip(step, f"arrays unreadable: {_short(e)}")
            return None
        return step, out[PARAMS_DIR], out["opt_state"], out["data"]

    def _skip(self, step: int, reason: str) -> None:
        """Set an unreadable step aside (renamed, never deleted) so the run can save that step
        number again, and record why."""
        src = self.directory / str(step)
        dest = self.directory / f"{step}.unreadable-{int(time.time())}"
        src.rename(dest)
        self.manager.reload()
        log.warning("checkpoint step %d is unreadable (%s); kept as %s, trying an older step",
                    step, reason, dest)
        self.skipped.append({"step": step, "reason": reason, "kept_as": str(dest)})

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _discard_abandoned_reads() -> None:
    """Collect the shard reads Orbax abandoned when a step failed to read. Closed by the garbage
    collector at some later moment, each would print an ignored exception's traceback (with a
    ~60-line TensorStore spec) on stderr, after the one warning line that already said why the
    step was set aside. Collected now, with unraisable exceptions silenced for that call only."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


@dataclasses.dataclass(frozen=True)
class RunStep:
    """One step of a training run: its model config and where its params item lives."""

    workdir: str
    step: int
    config: Qwen2Config
    params_dir: str


def open_run(workdir: Any, step: int | None = None) -> RunStep:
    """Step `step` (default: the latest) of the run in `workdir`, with its model config."""
    directory = run_checkpoints_dir(workdir)
    if not directory.exists():
        raise FileNotFoundError(f"{workdir}: no checkpoints/ (not a training workdir)")
    with quiet_orbax():
        manager = _manager(directory, read_only=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"{directory}: holds no finished checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{directory}: no step {step}; have {steps}")
        with quiet_orbax():
            meta = manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    where = directory / str(step)
    return RunStep(str(workdir), int(step), run_model_config(meta, str(where)),
                   str(where / PARAMS_DIR))


def run_model_config(meta: dict, where: str) -> Qwen2Config:
    """The Qwen2Config a run checkpoint's `meta` item describes (runtime fields default)."""
    if meta.get("layout_version") != LAYOUT_VERSION or meta.get("layers") != "stacked":
        raise ValueError(f"{where}/meta: layout_version {meta.get('layout_version')!r}, layers "
                         f"{meta.get('layers')!r}; this code reads version {LAYOUT_VERSION}, "
                         "stacked")
    return model_config_from_dict(dict(meta.get("model", {})), f"{where}/meta")

