"""Quality measurement of a cleaning run against the gold labels of `eval_corpus`."""

from __future__ import annotations

import collections


def evaluate(recs: list[dict], kept: list[dict], rejected: list[dict]) -> dict:
    gold = {r["id"]: r for r in recs}
    kept_ids = {d["id"] for d in kept}
    fate: dict[str, tuple[str, str, str]] = {}  # id -> (step, survivor id, predicted lang)
    for d in kept:
        fate[d["id"]] = ("kept", "", d["lang"])
    for r in rejected:
        if r["step"] != "parse":
            fate[r["id"]] = (r["step"], r.get("detail", ""), r.get("lang", "und"))

    # Language ID accuracy on genuine single-language documents (clean + their near-duplicates).
    lid = collections.defaultdict(lambda: [0, 0])
    for rid, g in gold.items():
        if g["gold_kind"] in ("clean", "near_duplicate", "exact_duplicate"):
            step, _, pred = fate[rid]
            if step not in ("parse", "normalize"):
                lid[g["gold_lang"]][0] += pred == g["gold_lang"]
                lid[g["gold_lang"]][1] += 1
    clean_kept = collections.defaultdict(lambda: [0, 0])
    for rid, g in gold.items():
        if g["gold_kind"] == "clean":
            clean_kept[g["gold_lang"]][0] += rid in kept_ids
            clean_kept[g["gold_lang"]][1] += 1

    # Per filter step: how many it rejected and which share was right (precision). A filter is
    # right on junk; a dedup step is right when the survivor it names is a copy of the same
    # original (either copy may survive).
    def group(rid: str) -> str:
        return gold[rid].get("dup_of", rid)

    per_step = collections.defaultdict(lambda: [0, 0])
    for rid, (step, survivor, _) in fate.items():
        if step == "kept":
            continue
        per_step[step][0] += 1
        if step in ("exact_dedup", "near_dedup"):
            per_step[step][1] += survivor in gold and group(survivor) == group(rid)
        else:
            per_step[step][1] += gold[rid]["gold_kind"] != "clean"
    # Per junk kind: recall (share rejected, by any step) and the step that caught most.
    per_kind = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for rid, g in gold.items():
        kind = g["gold_kind"]
        if kind == "clean" or kind in ("near_duplicate", "exact_duplicate"):
            continue
        per_kind[kind][1] += 1
        if rid not in kept_ids:
            per_kind[kind][0] += 1
            per_kind[kind][2][fate[rid][0]] += 1
    # Near-duplicate pairs: caught when at most one of the two copies is kept.
    pairs = collections.defaultdict(lambda: [0, 0])
    for rid, g in gold.items():
        if g["gold_kind"] in ("near_duplicate", "exact_duplicate"):
            band = "exact" if g["gold_kind"] == "exact_duplicate" else (
                ">=0.8" if g["jaccard"] >= 0.8 else "<0.8")
            if g["dup_of"] in kept_ids or rid in kept_ids:
                pairs[band][0] += not (g["dup_of"] in kept_ids and rid in kept_ids)
                pairs[band][1] += 1
    return {
        "lid_accuracy": {k: v[0] / v[1] for k, v in sorted(lid.items())},
        "lid_n": {k: v[1] for k, v in sorted(lid.items())},
        "clean_kept_rate": {k: v[0] / v[1] for k, v in sorted(clean_kept.items())},
        "step_precision": {k: {"rejected": v[0], "precision": v[1] / v[0]}
                           for k, v in sorted(per_step.items())},
        "junk_recall": {k: {"n": v[1], "recall": v[0] / v[1],
                            "caught_by": dict(v[2].most_common())}
                        for k, v in sorted(per_kind.items())},
        "dup_pair_recall": {k: {"pairs": v[1], "recall": v[0] / v[1] if v[1] else float("nan")}
                            for k, v in sorted(pairs.items())},
    }


def markdown(m: dict) -> str:
    out = ["| language | LID accuracy | docs | clean docs kept |", "|---|---:|---:|---:|"]
    for lang, acc in m["lid_accuracy"].items():
        out.append(f"| {lang} | {acc:.3f} | {m['lid_n'][lang]} | "
                   f"{m['clean_kept_rate'].get(lang, float('nan')):.2f} |")
    out += ["", "| step | rejected | precision |", "|---|---:|---:|"]
    for step, v in m["step_precision"].items():
        out.append(f"| {step} | {v['rejected']} | {v['precision']:.3f} |")
    out += ["", "| junk kind | docs | recall | caught by |", "|---|---:|---:|---|"]
    for kind, v in m["junk_recall"].items():
        by = ", ".join(f"{s} {n}" for s, n in v["caught_by"].items())
        out.append(f"| {kind} | {v['n']} | {v['recall']:.3f} | {by} |")
    out += ["", "| duplicate pairs (Jaccard of word 5-grams) | pairs | recall |", "|---|---:|---:|"]
    for band, v in m["dup_pair_recall"].items():
        out.append(f"| {band} | {v['pairs']} | {v['recall']:.3f} |")
    return "\n".join(out) + "\n"
