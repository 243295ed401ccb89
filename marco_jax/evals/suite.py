"""Run an evaluation suite: load each configured task, score it with the Engine, write its result
as soon as it finishes (a killed suite re-run with the same output directory skips the tasks
already written), then the report.

Output directory:
  meta.json             the checkpoint evaluated and the suite config (a re-run must match)
  tasks/<label>.json    scores per subset (language / direction), averages, groups, timings
  predictions/<label>.jsonl   per item: prediction(s), gold, log-likelihoods
  prompts/<label>.md    a few rendered prompts with the model's answer, for inspection
  report.json, report.md, plots/*.png   (marco_jax.evals.report)

The suite config is an ml_collections (or dict) file with `get_config()`, validated here into a
frozen `SuiteConfig`: unknown keys are rejected by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from marco_jax.checkpoint import given_overrides, is_run_workdir, load_model, params_location
from marco_jax.config.load import load_module
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.evals import metrics
from marco_jax.evals.tasks import (
    ChoiceItem,
    EvalDataError,
    GenerationItem,
    TaskData,
    load_task,
    task_options,
)
from marco_jax.model.init import abstract_model
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.parallel import MESH_AXES, build_mesh, pure_dict_shardings

SCHEMA_VERSION = 1


class EvalConfigError(ValueError):
    """The suite config or the output directory is not usable (message names the key/file)."""


class ScoringEngine(Protocol):
    max_len: int
    tokenizer: Any

    def loglikelihood(self, requests: Sequence[tuple[str, str]], progress: bool = False
                      ) -> list[tuple[float, bool]]: ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = (),
                 progress: bool = False) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One entry of `tasks`: the registry `name`, a unique result `label` (default: the name) and
    the loader's options."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    data_root: Path
    tasks: tuple[TaskSpec, ...]
    batch_size: int = 16
    max_len: int = 2048
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    limit: int = 0  # items per subset (0: all)
    prompts_saved: int = 3
    dtype: str = ""  # compute dtype override ("bfloat16", "float32"); "" keeps the checkpoint's
    matmul_dtype: str = ""  # matmul operand dtype override (marco_jax/model/matmul.py)
    # In-slice mesh axis sizes (data/fsdp/tensor, -1 = the rest) to shard the model and the
    # batches over; empty: one device.
    mesh: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict:
        return {"data_root": str(self.data_root), "batch_size": self.batch_size,
                "mesh": dict(self.mesh),
                "max_len": self.max_len, "length_buckets": list(self.length_buckets),
                "limit": self.limit, "prompts_saved": self.prompts_saved, "dtype": self.dtype,
                "matmul_dtype": self.matmul_dtype,
                "tasks": [{"name": t.name, "label": t.label, **dict(t.options)}
                          for t in self.tasks]}


_TOP_KEYS = {f.name for f in dataclasses.fields(SuiteConfig)}


def _plain(value: Any) -> Any:
    """ConfigDicts / FrozenConfigDicts / tuples -> dicts and lists."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_suite_config(raw: Any, *, base_dir: Path) -> SuiteConfig:
    """Validate a config mapping. A relative data_root is resolved against `base_dir`."""
    raw = _plain(raw)
    if not isinstance(raw, dict):
        raise EvalConfigError(f"suite config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise EvalConfigError(f"unknown suite config key {unknown[0]!r}; allowed: "
                              f"{sorted(_TOP_KEYS)}")
    entries = raw.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise EvalConfigError("suite config key 'tasks': expected a non-empty list of "
                              "{name: ..., <options>}")
    specs, labels = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise EvalConfigError(f"tasks[{i}]: expected a mapping with a 'name'")
        entry = dict(entry)
        name, label = entry.pop("name"), entry.pop("label", None) or None
        try:
            allowed = task_options(name)
        except EvalDataError as e:
            raise EvalConfigError(f"tasks[{i}]: {e}") from None
        bad = sorted(set(entry) - set(allowed))
        if bad:
            raise EvalConfigError(f"tasks[{i}] ({name}): unknown key {bad[0]!r}; allowed: "
                                  f"{sorted(allowed)}")
        label = label or name
        if label in labels:
            raise EvalConfigError(f"tasks[{i}]: label {label!r} used twice (give each a "
                                  "unique 'label')")
        labels.add(label)
        specs.append(TaskSpec(name, label, tuple(sorted(entry.items()))))
    values = {k: v for k, v in raw.items() if k != "tasks"}
    for key in ("batch_size", "max_len", "limit", "prompts_saved"):
        if key in values and (not isinstance(values[key], int) or values[key] < 0):
            raise EvalConfigError(f"suite config key {key!r}: expected an integer >= 0, got "
                                  f"{values[key]!r}")
    if "length_buckets" in values:
        values["length_buckets"] = tuple(int(b) for b in values["length_buckets"])
    for key in ("dtype", "matmul_dtype"):
        if values.get(key, "") not in ("", "float32", "bfloat16", "float16"):
            raise EvalConfigError(f"suite config key {key!r}: {values[key]!r} is not float32, "
                                  "bfloat16 or float16")
    mesh = values.get("mesh") or {}
    if not isinstance(mesh, dict) or set(mesh) - set(MESH_AXES) or not all(
            isinstance(v, int) for v in mesh.values()):
        raise EvalConfigError(f"suite config key 'mesh': expected {{axis: size}} over "
                              f"{list(MESH_AXES)} (-1 = the remaining devices), got {mesh!r}")
    values["mesh"] = tuple(mesh.items())
    data_root = Path(values.pop("data_root", "../shared/data")).expanduser()
    if not data_root.is_absolute():
        data_root = (base_dir / data_root).resolve()
    return SuiteConfig(data_root=data_root, tasks=tuple(specs), **values)


def load_suite_config(path: str | Path) -> SuiteConfig:
    """`get_config()` of an eval config file. A relative data_root is taken relative to the
    folder above the config file's (the repository root for configs/eval_*.py)."""
    path = Path(path)
    if not path.is_file():
        raise EvalConfigError(f"--config {path}: no such file")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise EvalConfigError(f"{path}: defines no get_config()")
    try:
        return parse_suite_config(module.get_config(), base_dir=path.resolve().parent.parent)
    except EvalConfigError as e:
        raise EvalConfigError(f"{path}: {e}") from None


# --- scoring one task -----------------------------------------------------------------------


def _limited(task: TaskData, limit: int) -> TaskData:
    if limit <= 0:
        return task
    subsets = tuple(dataclasses.replace(s, items=s.items[:limit]) for s in task.subsets)
    return dataclasses.replace(task, subsets=subsets)


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _score_choice(engine: ScoringEngine, task: TaskData, progress: bool
                  ) -> tuple[dict[str, dict], list[dict]]:
    requests = [(item.context, choice) for s in task.subsets for item in s.items
                for choice in item.choices]
    results = iter(engine.loglikelihood(requests, progress=progress))
    scores, records = {}, []
    for subset in task.subsets:
        preds, preds_norm, golds = [], [], []
        for item in subset.items:
            logprobs = [next(results)[0] for _ in item.choices]
            raw, norm = metrics.choice_predictions(logprobs, item.choices)
            preds.append(raw)
            preds_norm.append(norm)
            golds.append(item.gold)
            records.append({"id": item.id, "gold": item.gold, "pred": raw, "pred_norm": norm,
                            "logprobs": logprobs})
        scores[subset.key] = {"language": subset.language, "n": len(subset.items),
                              "acc": 100.0 * metrics.accuracy(preds, golds),
                              "acc_norm": 100.0 * metrics.accuracy(preds_norm, golds)}
    return scores, records


def _score_generation(engine: ScoringEngine, task: TaskData, progress: bool
                      ) -> tuple[dict[str, dict], list[dict]]:
    prompts = [item.prompt for s in task.subsets for item in s.items]
    outputs = iter(engine.generate(prompts, max_new_tokens=task.max_new_tokens, stop=task.stop,
                                   progress=progress))
    scores, records = {}, []
    for subset in task.subsets:
        predictions = [next(outputs) for _ in subset.items]
        values = task.scorer(predictions, subset.items, subset)
        scores[subset.key] = {"language": subset.language, "n": len(subset.items), **values}
        records += [{"id": item.id, "prediction": p, "references": list(item.references)}
                    for item, p in zip(subset.items, predictions, strict=True)]
    return scores, records


def group_averages(task: TaskData | dict, scores: dict[str, dict], metric_names: Sequence[str]
                   ) -> dict[str, dict[str, float]]:
    """The paper's groupings: translation tasks by en->xx / xx->en / non-English directions;
    other tasks by language when a language has several subsets (AGIEval's sub-tasks)."""
    grouping = task.grouping if isinstance(task, TaskData) else task["grouping"]
    groups: dict[str, list[str]] = {}
    for key, row in scores.items():
        if grouping == "direction":
            source, target = row["language"].split("-")
            name = "en->xx" if source == "en" else "xx->en" if target == "en" else "xx->yy"
        else:
            name = row["language"]
        groups.setdefault(name, []).append(key)
    if grouping != "direction" and all(len(keys) == 1 for keys in groups.values()):
        return {}
    return {name: {m: _mean([scores[k][m] for k in keys if m in scores[k]])
                   for m in metric_names} | {"subsets": len(keys)}
            for name, keys in sorted(groups.items())}


def count_truncated(engine: ScoringEngine, task: TaskData) -> int:
    """Items whose input the engine must cut from the left to fit max_len (lm-eval's rule):
    reported with the scores, never silent."""
    if task.kind == "choice":
        items = [item for s in task.subsets for item in s.items]
        longest = [max(item.choices, key=len) for item in items]
        lengths = engine.tokenizer.encode_batch([i.context + c for i, c in
                                                 zip(items, longest, strict=True)])
        return sum(len(ids) - 1 > engine.max_len for ids in lengths)
    prompts = [item.prompt for s in task.subsets for item in s.items]
    room = engine.max_len - task.max_new_tokens
    return sum(len(ids) > room for ids in engine.tokenizer.encode_batch(prompts))


def evaluate_task(engine: ScoringEngine, task: TaskData, *, limit: int = 0,
                  progress: bool = False, prompts_saved: int = 3
                  ) -> tuple[dict, list[dict], str]:
    """(result, per-item records, rendered prompts markdown) of one task."""
    task = _limited(task, limit)
    n_items = sum(len(s.items) for s in task.subsets)
    start = time.perf_counter()
    if task.kind == "choice":
        scores, records = _score_choice(engine, task, progress)
    else:
        scores, records = _score_generation(engine, task, progress)
    seconds = time.perf_counter() - start
    metric_names = [k for k in next(iter(scores.values())) if k not in ("language", "n")]
    result = {
        "schema": SCHEMA_VERSION, "task": task.name, "kind": task.kind,
        "primary_metric": task.primary_metric, "grouping": task.grouping,
        "settings": task.settings, "limit": limit or None, "items": n_items,
        "scores": scores,
        "average": {m: _mean([row[m] for row in scores.values()]) for m in metric_names},
        "groups": group_averages(task, scores, metric_names),
        "dropped": dict(task.dropped), "truncated": count_truncated(engine, task),
        "seconds": seconds, "items_per_second": n_items / seconds if seconds > 0 else None,
    }
    return result, records, render_prompts(task, records, prompts_saved)


def render_prompts(task: TaskData, records: Sequence[dict], count: int) -> str:
    """Markdown: the first item of the first `count` subsets, as the model saw it."""
    by_id = {r["id"]: r for r in records}
    parts = [f"# {task.name}: rendered prompts\n"]
    for subset in task.subsets[:count]:
        if not subset.items:
            continue
        item = subset.items[0]
        record = by_id[item.id]
        parts.append(f"## {subset.key} — {item.id}\n")
        if isinstance(item, ChoiceItem):
            parts.append("```text\n" + item.context + "\n```\n")
            for i, choice in enumerate(item.choices):
                marks = ("gold " if i == item.gold else "") + (
                    "predicted" if i == record["pred"] else "")
                parts.append(f"- `{choice!r}` log-likelihood {record['logprobs'][i]:.4f} "
                             f"{marks}".rstrip())
        elif isinstance(item, GenerationItem):
            parts.append("```text\n" + item.prompt + "\n```\n")
            parts.append(f"- generated: `{record['prediction']!r}`")
            parts.append(f"- references: {[r for r in item.references]!r}")
        parts.append("")
    return "\n".join(parts) + "\n"


# --- the model ------------------------------------------------------------------------------


def checkpoint_kind(path: str, step: int | None = None) -> str:
    """"ours" (model_config.json + params/), "run" (a training workdir) or "hf" (config.json +
    safetensors); EvalConfigError naming what was expected otherwise, or when `step` is given
    for anything but a training workdir."""
    root = epath.Path(path)
    kind = None
    if (root / "model_config.json").exists():
        kind = "ours"
    elif is_run_workdir(path):
        kind = "run"
    elif (root / "config.json").exists() and (any(root.glob("*.safetensors"))
                                              or any(root.glob("*.bin"))):
        kind = "hf"
    if kind is not None and step is not None and kind != "run":
        raise EvalConfigError(f"--step needs a training workdir; {path} is a "
                              f"{'HF directory' if kind == 'hf' else 'converted checkpoint'}")
    if kind is not None:
        return kind
    raise EvalConfigError(f"--checkpoint {path}: not a converted checkpoint (model_config.json), "
                          "a training workdir (checkpoints/) or a HF directory (config.json + "
                          "safetensors)")


def suite_mesh(config: SuiteConfig) -> Mesh | None:
    return build_mesh(dict(config.mesh)) if config.mesh else None


def load_eval_model(path: str, *, step: int | None = None, dtype: str = "",
                    mesh: Mesh | None = None, matmul_dtype: str = "") -> Qwen2ForCausalLM:
    """The model of any checkpoint kind, its params read straight into their shards on `mesh`
    (a HF directory is first converted into a temporary directory, removed once loaded)."""
    kind = checkpoint_kind(path, step)
    overrides = given_overrides(dtype=dtype, matmul_dtype=matmul_dtype)

    def load(source: str | Path) -> Qwen2ForCausalLM:
        shardings = None
        if mesh is not None:
            config, _ = params_location(source, step)
            shardings = pure_dict_shardings(abstract_model(config)[1], mesh)
        return load_model(source, shardings, step=step, **overrides)

    try:
        if kind == "hf":
            with tempfile.TemporaryDirectory(prefix="marco_eval_hf_") as tmp:
                convert_hf_to_orbax(path, Path(tmp) / "converted")
                return load(Path(tmp) / "converted")
        return load(path)
    except (ValueError, FileNotFoundError) as e:  # unreadable or mismatched checkpoint
        if isinstance(e, EvalConfigError):
            raise
        raise EvalConfigError(f"--checkpoint {path}: {str(e).splitlines()[0]}") from None


# --- the suite --------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def check_output_dir(out_dir: Path, meta: dict) -> None:
    """A re-run must evaluate the same checkpoint as the results already in `out_dir`."""
    file = out_dir / "meta.json"
    if not file.exists():
        return
    old = json.loads(file.read_text(encoding="utf-8"))
    if old.get("checkpoint") != meta.get("checkpoint") or old.get("step") != meta.get("step"):
        raise EvalConfigError(f"--out {out_dir} holds results of checkpoint "
                              f"{old.get('checkpoint')!r} (step {old.get('step')}); use another "
                              "--out for a different checkpoint")


def _already_written(result_file: Path, limit: int, log: Callable[[str], None], where: str
                     ) -> bool:
    """A task is skipped when its result exists and was computed with the same item limit."""
    if not result_file.exists():
        return False
    written = json.loads(result_file.read_text(encoding="utf-8")).get("limit")
    if written == (limit or None):
        return True
    log(f"{where}: written with limit {written}, re-running with limit {limit or None}")
    return False


def run_suite(config: SuiteConfig, out_dir: str | Path, make_engine: Callable[[], Any], *,
              meta: dict, limit: int | None = None, progress: bool = True,
              log: Callable[[str], None] = print, write: bool = True) -> list[dict]:
    """Evaluate every task not yet written under `out_dir`; returns all task results in config
    order. `make_engine` is called once, only if some task remains. `write`: this process
    writes files (False on all but the first host)."""
    out_dir = Path(out_dir)
    limit = config.limit if limit is None else limit
    check_output_dir(out_dir, meta)
    total = len(config.tasks)
    done = np.array([_already_written(out_dir / "tasks" / f"{spec.label}.json", limit, log,
                                      f"[{number}/{total}] {spec.label}")
                     for number, spec in enumerate(config.tasks, 1)], dtype=np.int32)
    if jax.process_count() > 1:  # hosts may not share out_dir: the first host decides for all
        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    # Every pending task is loaded before the model: a bad file fails in seconds, not hours.
    pending = {spec.label: load_task(spec.name, config.data_root, dict(spec.options))
               for spec, skip in zip(config.tasks, done, strict=True) if not skip}
    if write:
        _write_atomic(out_dir / "meta.json", _json({**meta, "suite": config.to_json()}))
    engine, results = None, []
    for number, spec in enumerate(config.tasks, 1):
        result_file = out_dir / "tasks" / f"{spec.label}.json"
        if spec.label not in pending:
            log(f"[{number}/{total}] {spec.label}: already written, skipped")
            if result_file.exists():
                results.append(json.loads(result_file.read_text(encoding="utf-8")))
            continue
        task = pending.pop(spec.label)
        n = sum(min(len(s.items), limit) if limit else len(s.items) for s in task.subsets)
        log(f"[{number}/{total}] {spec.label}: {n} items in {len(task.subsets)} subsets "
            f"({task.kind})")
        if engine is None:
            engine = make_engine()
        result, records, prompts = evaluate_task(engine, task, limit=limit, progress=progress,
                                                 prompts_saved=config.prompts_saved)
        result = {"label": spec.label, **result}
        if write:
            _write_atomic(out_dir / "predictions" / f"{spec.label}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            _write_atomic(out_dir / "prompts" / f"{spec.label}.md", prompts)
            _write_atomic(result_file, _json(result))
        primary = result["average"].get(task.primary_metric, float("nan"))
        log(f"[{number}/{total}] {spec.label}: {task.primary_metric} {primary:.2f} "
            f"({result['seconds']:.1f} s, {result['items_per_second']:.1f} items/s)")
        results.append(result)
    return results
