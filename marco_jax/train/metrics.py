"""Where training figures go: TensorBoard (tensorboardX), a JSONL file, a progress bar on a
terminal, and a loss-curve PNG at the end. Only process 0 writes. What the figures are is the
objective's business (`marco_jax.train.objective`); this module only moves them."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from marco_jax.data.mixtures import GROUP_TASKS
from marco_jax.paths import is_remote


class SumWindow:
    """Adds up per-step sums between two log lines (host side, numpy, float64)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.steps = 0

    def add(self, sums: Mapping[str, Any]) -> None:
        self.steps += 1
        for k, v in sums.items():
            v = np.asarray(v, np.float64)
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def reset(self) -> None:
        self.sums, self.steps = {}, 0


class MetricsWriter:
    """Remote workdirs (gs://) get a local mirror that is copied up every `sync_every` writes and
    at close: object stores cannot append to a JSONL file or an event file."""

    def __init__(self, workdir: str, enabled: bool = True, total_steps: int = 0,
                 start_step: int = 0, progress: bool | None = None, sync_every: int = 20):
        self.enabled = enabled
        self.remote = epath.Path(workdir) if is_remote(workdir) else None
        self.history: list[dict[str, Any]] = []
        self.tb = None
        self.bar = None
        self.sync_every, self._writes = sync_every, 0
        if not enabled:
            return
        if self.remote is not None:
            import hashlib
            import tempfile

            tag = hashlib.blake2b(str(workdir).encode(), digest_size=6).hexdigest()
            self.dir = epath.Path(tempfile.gettempdir()) / f"marco_metrics_{tag}"
            self.dir.mkdir(parents=True, exist_ok=True)
            remote_log = self.remote / "metrics.jsonl"
            if remote_log.exists():  # a resumed run keeps appending to the whole history
                (self.dir / "metrics.jsonl").write_text(remote_log.read_text())
        else:
            self.dir = epath.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        self.jsonl = (self.dir / "metrics.jsonl").open("a")
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self.history.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in scalars.items():
            self.tb.add_scalar(k, float(v), int(step))
        self.tb.flush()
        self._writes += 1
        if self.remote is not None and self._writes % self.sync_every == 0:
            self.sync()

    def sync(self) -> None:
        """Copy the local mirror's files up to the remote workdir."""
        if self.remote is None or not self.enabled:
            return
        for f in self.dir.rglob("*"):
            if f.is_file():
                dest = self.remote / f.relative_to(self.dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                f.copy(dest, overwrite=True)

    def progress(self, step: int, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def echo(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def loss_curve(self, path: str | None = None) -> str | None:
        """Plot the whole run (resumes included) from metrics.jsonl: train and held-out loss on
        the left; on the right, held-out loss per language group (the mixture's groups: English,
        Chinese, other high-resource, low-resource, ...; the mean over the group's tasks present
        in the eval batches), the figure that shows what continual pretraining does."""
        if not self.enabled:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        latest: dict[int, dict] = {}
        for line in (self.dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            latest.setdefault(rec["step"], {}).update(rec)  # a resumed run rewrites its steps
        steps = sorted(latest)
        groups = eval_loss_by_group(latest)
        fig, axes = plt.subplots(1, 2 if groups else 1, figsize=(13 if groups else 7, 4),
                                 squeeze=False)
        ax = axes[0][0]
        train = [(s, latest[s]["loss"]) for s in steps if "loss" in latest[s]]
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss")
        evals = [(s, latest[s]["eval_loss"]) for s in steps if "eval_loss" in latest[s]]
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", label="held-out loss")
        ax.set_title("all tasks")
        if groups:
            right = axes[0][1]
            for label, points in groups.items():
                right.plot(*zip(*points, strict=True), "o-", label=label)
            right.set_title("held-out loss per language group")
        for a in axes[0]:
            a.set_xlabel("step")
            a.set_ylabel("cross-entropy (nats/token)")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        out = epath.Path(path) if path else self.dir / "loss_curve.png"
        with out.open("wb") as f:
            fig.savefig(f, dpi=120, bbox_inches="tight")
        plt.close(fig)
        if path is None and self.remote is not None:
            return str(self.remote / "loss_curve.png")  # copied up by the next sync/close
        return str(out)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self.jsonl.close()
        self.sync()


GROUP_LABELS = {"english": "English", "chinese": "Chinese", "high_resource": "other high-resource",
                "low_resource": "low-resource", "parallel": "parallel (bitext)",
                "knowledge": "knowledge", "synthetic": "synthetic"}


def eval_loss_by_group(records: Mapping[int, Mapping[str, float]],
                       prefix: str = "eval_loss/") -> dict[str, list[tuple[int, float]]]:
    """{"<group> (<n> tasks)": [(step, mean held-out loss over the group's tasks)]} from
    per-step records holding `eval_loss/<task>`; groups from the CPT mixtures' `GROUP_TASKS`
    (a task in none of them is its own group). A group's tasks are those of its first eval
    (the eval batches are the same every time), so every point averages the same tasks."""
    group_of = {t: g for g, ts in GROUP_TASKS.items() for t in ts}
    out: dict[str, list[tuple[int, float]]] = {}
    members: dict[str, tuple[str, ...]] = {}
    for step in sorted(records):
        by_group: dict[str, dict[str, float]] = {}
        for key, value in records[step].items():
            if key.startswith(prefix):
                task = key[len(prefix):]
                by_group.setdefault(group_of.get(task, task), {})[task] = value
        for g, losses in by_group.items():
            tasks = members.setdefault(g, tuple(sorted(losses)))
            if all(t in losses for t in tasks):
                label = f"{GROUP_LABELS.get(g, g)} ({len(tasks)} task{'s' * (len(tasks) > 1)})"
                out.setdefault(label, []).append(
                    (step, float(np.mean([losses[t] for t in tasks]))))
    order = list(GROUP_TASKS)
    return dict(sorted(out.items(), key=lambda kv: next(
        (i for i, g in enumerate(order) if kv[0].startswith(GROUP_LABELS[g] + " (")), len(order))))
