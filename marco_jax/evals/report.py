"""Reports of evaluation results: JSON + Markdown of every score per task and language (or
direction), the paper's group averages, PNG plots (per-language bars, a source x target heatmap for
any-to-any translation), and the comparison of several result directories (the paper's
base-vs-continued tables) with per-language deltas.

Scores are percentages (accuracy, F1, exact match) or BLEU/chrF++ points, higher is better.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


class ResultsError(ValueError):
    """A result directory is missing or unreadable (message names it)."""


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.2f}"


def _delta(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.2f}"


def _minus(a: float | None, b: float | None) -> float:
    return float("nan") if a is None or b is None else a - b


def _json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def read_results(result_dir: str | Path) -> tuple[dict, list[dict]]:
    """(meta, task results in meta's config order, then any others by label)."""
    result_dir = Path(result_dir)
    tasks_dir = result_dir / "tasks"
    if not tasks_dir.is_dir():
        raise ResultsError(f"{result_dir}: not an evaluation output (no tasks/ folder)")
    meta_file = result_dir / "meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
    by_label = {}
    for file in sorted(tasks_dir.glob("*.json")):
        try:
            result = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ResultsError(f"{file}: not JSON ({e.msg})") from None
        by_label[result.get("label", file.stem)] = result
    if not by_label:
        raise ResultsError(f"{tasks_dir}: holds no task results")
    order = [t["label"] for t in meta.get("suite", {}).get("tasks", [])]
    labels = [x for x in order if x in by_label] + sorted(set(by_label) - set(order))
    return meta, [by_label[x] for x in labels]


def _metric_columns(result: dict) -> list[str]:
    first = next(iter(result["scores"].values()))
    return [k for k in first if k not in ("language", "n")]


def _settings_text(result: dict) -> str:
    s = result.get("settings", {})
    bits = [f"{s['shots']}-shot" if "shots" in s else "", s.get("split", "")]
    if result.get("limit"):
        bits.append(f"first {result['limit']} items per subset")
    return ", ".join(b for b in bits if b)


def headline(results: Sequence[dict]) -> list[dict]:
    """One row per task: its primary metric's average over subsets, and its groups'."""
    rows = []
    for r in results:
        metric = r["primary_metric"]
        rows.append({"task": r["label"], "metric": metric, "average": r["average"].get(metric),
                     "groups": {g: v.get(metric) for g, v in r.get("groups", {}).items()},
                     "subsets": len(r["scores"]), "items": r.get("items")})
    return rows


def by_language(results: Sequence[dict]) -> tuple[list[str], list[str], dict]:
    """(languages, task labels, {(language, label): primary metric}) over the tasks reported per
    language (a language's sub-tasks averaged), for the cross-task overview table."""
    labels, cells = [], {}
    for r in results:
        if r.get("grouping") == "direction":
            continue
        metric = r["primary_metric"]
        values: dict[str, list[float]] = {}
        for row in r["scores"].values():
            values.setdefault(row["language"], []).append(row.get(metric))
        labels.append(r["label"])
        for lang, vs in values.items():
            vs = [v for v in vs if v is not None and not math.isnan(v)]
            cells[(lang, r["label"])] = sum(vs) / len(vs) if vs else float("nan")
    languages = sorted({lang for lang, _ in cells})
    return languages, labels, cells


def task_markdown(result: dict) -> str:
    columns = _metric_columns(result)
    lines = [f"## {result['label']} ({result['task']}: {result['primary_metric']}; "
             f"{_settings_text(result)})", "",
             "| subset | n | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for key, row in result["scores"].items():
        lines.append(f"| {key} | {row['n']} | " + " | ".join(_fmt(row.get(c)) for c in columns)
                     + " |")
    lines.append("| **average** | | " + " | ".join(f"**{_fmt(result['average'].get(c))}**"
                                                  for c in columns) + " |")
    for group, values in result.get("groups", {}).items():
        lines.append(f"| *{group}* ({values.get('subsets')}) | | "
                     + " | ".join(f"*{_fmt(values.get(c))}*" for c in columns) + " |")
    if result.get("dropped"):
        lines += ["", "Dropped items: " + ", ".join(f"{n} ({reason})" for reason, n
                                                    in result["dropped"].items())]
    if result.get("truncated"):
        lines += ["", f"{result['truncated']} items had their prompt cut from the left to fit "
                  "max_len."]
    seconds, rate = result.get("seconds"), result.get("items_per_second")
    if seconds is not None and rate is not None:
        lines += ["", f"{result.get('items')} items in {seconds:.1f} s ({rate:.1f} items/s)."]
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------


def _bar_plot(path: Path, labels: Sequence[str], series: dict[str, Sequence[float]], title: str,
              ylabel: str, signed: bool = False) -> None:
    """Grouped bars; `signed` (deltas, one series): gains green, losses red."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) * max(1, len(series)) + 2), 3.6))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        values = [0.0 if v is None or math.isnan(v) else v for v in values]
        colors = (["tab:green" if v >= 0 else "tab:red" for v in values]
                  if signed and len(series) == 1 else None)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=colors)
    ax.set_xticks(x, labels, rotation=60 if len(labels) > 8 else 0, ha="right"
                  if len(labels) > 8 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.6)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def direction_matrix(result: dict, metric: str) -> tuple[list[str], np.ndarray]:
    """(languages, [source, target] matrix, NaN off the evaluated directions)."""
    pairs = {tuple(row["language"].split("-")): row.get(metric)
             for row in result["scores"].values()}
    langs = sorted({lang for pair in pairs for lang in pair})
    matrix = np.full((len(langs), len(langs)), np.nan)
    for (s, t), value in pairs.items():
        matrix[langs.index(s), langs.index(t)] = np.nan if value is None else value
    return langs, matrix


def _heatmap(path: Path, result: dict, metric: str) -> None:
    langs, matrix = direction_matrix(result, metric)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(langs), 0.8 + 0.55 * len(langs)))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    for i in range(len(langs)):
        for j in range(len(langs)):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white")
    ax.set_title(f"{result['label']}: {metric} (source x target)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_any_to_any(result: dict) -> bool:
    if result.get("grouping") != "direction":
        return False
    return any("en" not in row["language"].split("-") for row in result["scores"].values())


def task_plots(result: dict, plot_dir: Path) -> list[Path]:
    plot_dir.mkdir(parents=True, exist_ok=True)
    metric = result["primary_metric"]
    keys = list(result["scores"])
    path = plot_dir / f"{result['label']}.png"
    _bar_plot(path, keys, {metric: [result["scores"][k].get(metric) for k in keys]},
              f"{result['label']}: {metric} per subset", metric)
    paths = [path]
    if _is_any_to_any(result):
        heat = plot_dir / f"{result['label']}_heatmap.png"
        _heatmap(heat, result, metric)
        paths.append(heat)
    return paths


# --- one result directory -------------------------------------------------------------------


def write_report(result_dir: str | Path) -> dict:
    """report.json, report.md and plots/ for the task results under `result_dir`."""
    result_dir = Path(result_dir)
    meta, results = read_results(result_dir)
    plots = {r["label"]: [str(p.relative_to(result_dir))
                          for p in task_plots(r, result_dir / "plots")] for r in results}
    rows = headline(results)
    report = {"checkpoint": meta.get("checkpoint"), "step": meta.get("step"),
              "headline": rows, "tasks": results, "plots": plots}
    (result_dir / "report.json").write_text(_json(report), encoding="utf-8")
    title = meta.get("name") or meta.get("checkpoint") or result_dir.name
    md = [f"# Evaluation of {title}", ""]
    if meta.get("step") is not None:
        md += [f"Training step {meta['step']}.", ""]
    md += ["| task | metric | average | groups |", "|---|---|---:|---|"]
    for row in rows:
        groups = ", ".join(f"{g} {_fmt(v)}" for g, v in row["groups"].items())
        md.append(f"| {row['task']} | {row['metric']} | {_fmt(row['average'])} | {groups} |")
    md.append("")
    languages, labels, cells = by_language(results)
    if len(languages) > 1:
        md += ["## By language (primary metric)", "",
               "| language | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        md += [f"| {lang} | " + " | ".join(_fmt(cells.get((lang, x))) for x in labels) + " |"
               for lang in languages]
        md.append("")
    for r in results:
        md.append(task_markdown(r))
        md += [f"![{p}]({p})" for p in plots[r["label"]]]
        md.append(f"\nPrompts: [prompts/{r['label']}.md](prompts/{r['label']}.md)\n")
    (result_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return report


# --- comparison -------------------------------------------------------------------------------


def _run_names(dirs: Sequence[Path], metas: Sequence[dict]) -> list[str]:
    names = [m.get("name") or d.name for d, m in zip(dirs, metas, strict=True)]
    return [f"{n} ({i})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def compare(result_dirs: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Side by side: the tasks every run has, per subset, with deltas against the first run.
    Writes comparison.json, comparison.md and plots/delta_*.png under `out_dir`."""
    if len(result_dirs) < 2:
        raise ResultsError("compare needs at least two result directories")
    dirs = [Path(d) for d in result_dirs]
    loaded = [read_results(d) for d in dirs]
    names = _run_names(dirs, [m for m, _ in loaded])
    by_run = [{r["label"]: r for r in results} for _, results in loaded]
    common = [label for label in by_run[0] if all(label in run for run in by_run[1:])]
    if not common:
        raise ResultsError("the result directories share no task")
    missing = sorted({label for run in by_run for label in run} - set(common))
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    tasks, md = [], [f"# Comparison: {' vs '.join(names)}", "",
                     f"Deltas are against {names[0]}.", ""]
    headline_rows = []
    for label in common:
        runs = [run[label] for run in by_run]
        metric = runs[0]["primary_metric"]
        keys = [k for k in runs[0]["scores"] if all(k in r["scores"] for r in runs[1:])]
        rows = []
        for key in keys:
            values = [r["scores"][key].get(metric) for r in runs]
            rows.append({"subset": key, "values": values,
                         "deltas": [_minus(v, values[0]) for v in values[1:]]})
        averages = [r["average"].get(metric) for r in runs]
        groups = {}
        for group in runs[0].get("groups", {}):
            if all(group in r.get("groups", {}) for r in runs[1:]):
                values = [r["groups"][group].get(metric) for r in runs]
                groups[group] = {"values": values,
                                 "deltas": [_minus(v, values[0]) for v in values[1:]]}
        task = {"task": label, "metric": metric, "subsets": rows,
                "average": {"values": averages,
                            "deltas": [_minus(a, averages[0]) for a in averages[1:]]},
                "groups": groups}
        tasks.append(task)
        headline_rows.append((label, metric, averages))
        md += [f"## {label} ({metric})", "",
               "| subset | " + " | ".join(names) + " | " +
               " | ".join(f"Δ {n}" for n in names[1:]) + " |",
               "|---|" + "---:|" * (2 * len(names) - 1)]
        for row in rows + [{"subset": "**average**", **task["average"]}] + [
                {"subset": f"*{g}*", **v} for g, v in groups.items()]:
            md.append(f"| {row['subset']} | " + " | ".join(_fmt(v) for v in row["values"])
                      + " | " + " | ".join(_delta(d) for d in row["deltas"]) + " |")
        plot = out_dir / "plots" / f"delta_{label}.png"
        _bar_plot(plot, [r["subset"] for r in rows],
                  {f"{n} − {names[0]}": [r["deltas"][i] for r in rows]
                   for i, n in enumerate(names[1:])},
                  f"{label}: Δ {metric} vs {names[0]}", f"Δ {metric}", signed=True)
        task["plot"] = str(plot.relative_to(out_dir))
        md += ["", f"![{task['plot']}]({task['plot']})", ""]
    summary = ["| task | metric | " + " | ".join(names) + " | "
               + " | ".join(f"Δ {n}" for n in names[1:]) + " |",
               "|---|---|" + "---:|" * (2 * len(names) - 1)]
    for label, metric, averages in headline_rows:
        deltas = [_delta(_minus(a, averages[0])) for a in averages[1:]]
        summary.append(f"| {label} | {metric} | " + " | ".join(_fmt(a) for a in averages)
                       + " | " + " | ".join(deltas) + " |")
    plot = out_dir / "plots" / "delta_headline.png"
    _bar_plot(plot, [h[0] for h in headline_rows],
              {f"{n} − {names[0]}": [_minus(h[2][i + 1], h[2][0]) for h in headline_rows]
               for i, n in enumerate(names[1:])},
              f"Δ task averages vs {names[0]}", "Δ (points)", signed=True)
    md[4:4] = summary + ["", "![plots/delta_headline.png](plots/delta_headline.png)", ""]
    if missing:
        md += [f"Not in every run (not compared): {', '.join(missing)}", ""]
    comparison = {"runs": [{"name": n, "dir": str(d)} for n, d in zip(names, dirs, strict=True)],
                  "tasks": tasks, "not_compared": missing}
    (out_dir / "comparison.json").write_text(_json(comparison), encoding="utf-8")
    (out_dir / "comparison.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return comparison
