"""Accounting: every input record ends as exactly one event (kept, or rejected at a step for a
reason, malformed included); the events are tallied and checked against an independent count of
input records, and written as a JSON + Markdown report."""

from __future__ import annotations

import json
from collections import defaultdict

import apache_beam as beam

KEPT = "kept"


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
