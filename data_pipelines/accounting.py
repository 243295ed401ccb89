"""Accounting: every input record ends as exactly one event (kept, or rejected at a step for a
reason, malformed included); the events are tallied and checked against an independent count of
input records, and written as a JSON + Markdown report."""

from __future__ import annotations

import json
from collections import defaultdict

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsSingleton, TaggedOutput

from data_pipelines.sinks import write_rejected_sample

KEPT = "kept"
REJECTED = "rejected"  # the tag of every step's rejected output


def reject(record: dict, step: str, reason: str, detail: str = "") -> TaggedOutput:
    """`record` rejected at `step` for `reason`, as a tagged output of a multi-output DoFn."""
    rec = {k: v for k, v in record.items() if k not in ("raw", "minhash")}
    rec.update(step=step, reason=reason, detail=detail)
    rec.setdefault("lang", "und")
    rec.setdefault("tokens", 0)
    return TaggedOutput(REJECTED, rec)


def event(record: dict, step: str | None = None) -> tuple[str, str, str, int]:
    """(lang, step, reason, tokens) for a rejected record or, with step=KEPT, a kept doc."""
    if step == KEPT:
        return record.get("lang", "und"), KEPT, "", int(record.get("tokens", 0))
    return (record.get("lang", "und"), record["step"], record["reason"],
            int(record.get("tokens", 0)))


class TallyFn(beam.CombineFn):
    """(lang, step, reason, tokens) events -> {(lang, step, reason): [records, tokens]}."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, ev):
        key = ev[:3]
        cur = acc.setdefault(key, [0, 0])
        cur[0] += 1
        cur[1] += ev[3]
        return acc

    def merge_accumulators(self, accs):
        out: dict = {}
        for acc in accs:
            for key, (n, t) in acc.items():
                cur = out.setdefault(key, [0, 0])
                cur[0] += n
                cur[1] += t
        return out

    def extract_output(self, acc):
        return acc


class AccountingError(RuntimeError):
    pass


def build_report(tally: dict, n_input: int, steps: tuple[str, ...]) -> dict:
    """Per-step, per-language records/tokens in and out, reasons, and the accounting identity
    `inputs = kept + sum(rejected) + malformed`. Raises AccountingError if it does not hold.

    A record's language is the one language ID gave it ("und" before that step), so the
    per-language rows of early steps hold the records that never reached language ID.
    """
    unknown = {step for (_, step, _) in tally if step not in steps and step != KEPT}
    if unknown:
        raise AccountingError(f"events from steps {sorted(unknown)} not in the step list {steps}")
    order = {s: i for i, s in enumerate((*steps, KEPT))}
    by_lang_step: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (lang, step, reason), (n, t) in tally.items():
        cell = by_lang_step[lang][step]
        cell[0] += n
        cell[1] += t
        if step != KEPT:
            reasons[step][reason] += n

    rows = []
    for lang in sorted(by_lang_step):
        cells = by_lang_step[lang]
        for step in steps:
            later = [s for s in cells if order[s] >= order[step]]
            rec_in = sum(cells[s][0] for s in later)
            tok_in = sum(cells[s][1] for s in later)
            if rec_in == 0:
                continue
            rej = cells.get(step, [0, 0])
            rows.append({"step": step, "lang": lang, "records_in": rec_in,
                         "records_out": rec_in - rej[0], "tokens_in": tok_in,
                         "tokens_out": tok_in - rej[1]})

    kept = sum(n for (_, s, _), (n, _) in tally.items() if s == KEPT)
    kept_tokens = sum(t for (_, s, _), (_, t) in tally.items() if s == KEPT)
    malformed = sum(reasons.get("parse", {}).values())
    rejected = sum(n for s, r in reasons.items() if s != "parse" for n in r.values())
    report = {
        "inputs": n_input, "kept": kept, "kept_tokens": kept_tokens, "rejected": rejected,
        "malformed": malformed,
        "reasons": {s: dict(sorted(r.items())) for s, r in reasons.items()},
        "kept_by_language": {lang: {"documents": c[KEPT][0], "tokens": c[KEPT][1]}
                             for lang, c in sorted(by_lang_step.items()) if KEPT in c},
        "steps": rows,
    }
    if kept + rejected + malformed != n_input:
        raise AccountingError(
            f"accounting mismatch: {n_input} input records but kept {kept} + rejected {rejected} + "
            f"malformed {malformed} = {kept + rejected + malformed}")
    return report


def report_markdown(report: dict) -> str:
    lines = [f"inputs {report['inputs']} = kept {report['kept']} + rejected {report['rejected']}"
             f" + malformed {report['malformed']}", "",
             "| step | lang | records in | records out | tokens in | tokens out |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["steps"]:
        lines.append(f"| {r['step']} | {r['lang']} | {r['records_in']} | {r['records_out']} | "
                     f"{r['tokens_in']} | {r['tokens_out']} |")
    lines += ["", "| step | reason | records |", "|---|---|---:|"]
    for step, reasons in report["reasons"].items():
        for reason, n in reasons.items():
            lines.append(f"| {step} | {reason} | {n} |")
    return "\n".join(lines) + "\n"


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def _stats(report: dict, partitions: tuple[str, ...]) -> dict:
    """stats.json: counts per written partition (language or pair), zeros included, so it lists
    exactly the shard folders beside it (a partition that kept nothing has empty shards)."""
    kept = report["kept_by_language"]
    by_lang = {name: kept.get(name, {"documents": 0, "tokens": 0})
               for name in sorted({*partitions, *kept})}
    return {"documents": sum(v["documents"] for v in by_lang.values()),
            "tokens": sum(v["tokens"] for v in by_lang.values()), "by_language": by_lang}


def _write_reports(_, tally: dict, n_input: int, steps: tuple[str, ...], output: str,
                   partitions: tuple[str, ...]):
    report = build_report(tally, n_input, steps)  # raises on a mismatch
    _write_text(f"{output}/stats.json", dumps(_stats(report, partitions)))
    _write_text(f"{output}/report.json", dumps(report))
    _write_text(f"{output}/report.md", report_markdown(report))
    yield report


def account_and_report(kept, rejected: list, n_input, steps: tuple[str, ...], output: str,
                       rejected_sample: float, partitions: tuple[str, ...] = ()):
    """The shared tail of a cleaning pipeline: flatten every step's rejected output, write a
    sample of it to `output/rejected/`, tally kept + rejected events, check them against the
    input count `n_input` (a singleton PCollection) and write stats.json (one entry per name in
    `partitions`, the shard folders written) + report.{json,md}.
    Returns the PCollection holding the report dict."""
    p = kept.pipeline
    all_rejected = rejected | "AllRejected" >> beam.Flatten()
    write_rejected_sample(all_rejected, f"{output}/rejected/part", rejected_sample)
    events = ((kept | "KeptEvents" >> beam.Map(event, KEPT),
               all_rejected | "RejectedEvents" >> beam.Map(event))
              | "Events" >> beam.Flatten())
    tally = events | "Tally" >> beam.CombineGlobally(TallyFn())
    return (p | "Once" >> beam.Create([None])
            | "Report" >> beam.FlatMap(_write_reports, tally=AsSingleton(tally),
                                       n_input=AsSingleton(n_input), steps=steps, output=output,
                                       partitions=tuple(partitions)))
