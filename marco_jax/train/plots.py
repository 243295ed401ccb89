"""Preference-training curves from a run's metrics.jsonl: reward accuracy and reward margins over
steps (DPO), beside the loss curve the Logging hook draws."""

from __future__ import annotations

import json

from etils import epath


def preference_curves(workdir: str) -> str | None:
    """Write `<workdir>/dpo_curves.png` (accuracy and margins over steps); None if no DPO
    figures were logged."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    latest: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        latest.setdefault(rec["step"], {}).update(rec)  # a resumed run rewrites its steps
    keys = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
    steps = [s for s in sorted(latest) if keys[0] in latest[s]]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, margin) = plt.subplots(1, 2, figsize=(11, 4))
    acc.plot(steps, [latest[s][keys[0]] for s in steps], label="train")
    evals = [s for s in sorted(latest) if f"eval_{keys[0]}" in latest[s]]
    if evals:
        acc.plot(evals, [latest[s][f"eval_{keys[0]}"] for s in evals], "o-", label="held-out")
    acc.set_ylim(-0.02, 1.02)
    acc.set_ylabel("reward accuracy (chosen > rejected)")
    for key, label in zip(keys[1:], ("margin", "chosen", "rejected"), strict=True):
        if key in latest[steps[0]]:
            margin.plot(steps, [latest[s][key] for s in steps], label=label)
    margin.set_ylabel("implicit reward (beta x log-ratio)")
    for ax in (acc, margin):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    out = epath.Path(workdir) / "dpo_curves.png"
    with out.open("wb") as f:
        fig.savefig(f, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(out)
