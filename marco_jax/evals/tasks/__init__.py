"""Benchmark tasks by name: each loader reads a benchmark's published files from a local path and
returns a `TaskData` (items with their prompts, how to score them)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from marco_jax.evals.tasks import (
    agieval,
    arc,
    belebele,
    exams,
    mgsm,
    translation,
    tydiqa,
    xcopa,
    xnli,
    xstorycloze,
)
from marco_jax.evals.tasks.base import (
    ChoiceItem,
    EvalDataError,
    GenerationItem,
    Subset,
    TaskData,
)

TASKS: dict[str, Callable[..., TaskData]] = {
    "belebele": belebele.load,
    "xcopa": xcopa.load,
    "xstorycloze": xstorycloze.load,
    "xnli": xnli.load,
    "mmmlu": exams.load_mmmlu,
    "mmlu": exams.load_mmlu,
    "cmmlu": exams.load_cmmlu,
    "ceval": exams.load_ceval,
    "agieval": agieval.load,
    "arc": arc.load,
    "tydiqa": tydiqa.load,
    "mgsm": mgsm.load,
    "flores": translation.load_flores,
    "flores_any": translation.load_flores_any,
    "wmt16": translation.load_wmt16,
}


def task_options(name: str) -> dict[str, Any]:
    """The options a task accepts, with their defaults."""
    loader = _loader(name)
    return {p.name: p.default for p in list(inspect.signature(loader).parameters.values())[1:]}


def load_task(name: str, data_root: str | Path, options: Mapping[str, Any] | None = None
              ) -> TaskData:
    """Load task `name` with `options` (keyword options of its loader; lists become tuples).
    Unknown names or options raise EvalDataError naming them."""
    allowed = task_options(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EvalDataError(f"task {name!r}: unknown option(s) {unknown}; allowed: "
                            f"{sorted(allowed)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return _loader(name)(Path(data_root), **options)


def _loader(name: str) -> Callable[..., TaskData]:
    try:
        return TASKS[name]
    except KeyError:
        raise EvalDataError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "ChoiceItem", "EvalDataError", "GenerationItem", "Subset", "TaskData",
           "load_task", "task_options"]
