"""README command 1's training part, shrunk to a few steps: `python -m marco_jax.train` on
configs/demo_base.py, then on configs/demo.py continuing from it by the config's own relative
`train.init_from`, from a fresh shell's environment (no JAX_PLATFORMS, no XLA_FLAGS). Both stages
run end to end through the real data pipeline; stage 1 starts from stage 0's weights; stdout and
stderr carry only our lines (no TPU probe, TensorFlow or Orbax chatter); the run writes
checkpoints, metrics, TensorBoard events and a loss PNG with the held-out loss per language
group."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from test_platform import PROBE_LINE

from marco_jax import platform
from marco_jax.checkpoint import load_model
from marco_jax.config import load_config_file
from marco_jax.data.languages import LOW_RESOURCE, OTHER_HIGH_RESOURCE
from marco_jax.train.metrics import eval_loss_by_group

ROOT = Path(__file__).resolve().parents[1]
SHRINK = ["--config.data.seq_len=32", "--config.train.log_every=2",
          "--config.checkpoint.async_save=false"]


def records(workdir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def train_cli(cwd: Path, config: str, workdir: str, *overrides: str) -> subprocess.CompletedProcess:
    """The README's command from a fresh shell, in `cwd` (relative workdirs, as the README's)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "marco_jax.train", "--config", str(ROOT / "configs" / config),
         "--workdir", workdir, *SHRINK, *overrides],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not platform.tpu_device_present():  # on TPU hosts the probe lines are wanted
        assert [line for line in proc.stderr.splitlines() if PROBE_LINE.search(line)] == []
    assert "absl" not in proc.stderr, proc.stderr[-2000:]  # no Orbax chatter either
    return proc


def test_demo_configs_are_the_two_stages():
    base, demo = (load_config_file(ROOT / "configs" / c) for c in ("demo_base.py", "demo.py"))
    assert dict(base.data.shares) == {"english": 0.65, "chinese": 0.35}
    assert demo.train.init_from == "runs/demo_base" and not demo.data.shares  # stage-I mixture


def test_readme_command_trains_both_stages_with_clean_output(tmp_path):
    base = train_cli(tmp_path, "demo_base.py", "runs/demo_base", "--config.train.steps=2",
                     "--config.train.eval_every=2", "--config.checkpoint.every=2")
    assert "step 2/2" in base.stdout and "done: step 2" in base.stdout
    base_dir = tmp_path / "runs" / "demo_base"
    base_evals = {k for r in records(base_dir).values() for k in r if k.startswith("eval_loss/")}
    assert base_evals and base_evals <= {"eval_loss/web.en", "eval_loss/web.zh"}  # 2 languages

    # demo.py's own train.init_from (runs/demo_base, relative to the working directory); another
    # seed, so that a random init would now differ from stage 0's.
    demo = train_cli(tmp_path, "demo.py", "runs/demo", "--config.train.steps=6",
                     "--config.train.eval_every=3", "--config.checkpoint.every=3",
                     "--config.checkpoint.keep=2", "--config.eval.batches=8",
                     "--config.train.seed=1")
    assert "done: step 6" in demo.stdout
    run = tmp_path / "runs" / "demo"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]
    recs = records(run)
    train_recs = [r for r in recs.values() if "loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in train_recs)
    # The closing line: the held-out loss of the first and the last eval beside the train loss.
    evals = sorted((r["step"], r["eval_loss"]) for r in recs.values() if "eval_loss" in r)
    assert [step for step, _ in evals][-1] == 6
    assert (f", held-out loss {evals[0][1]:.4f} -> {evals[-1][1]:.4f}; workdir"
            in demo.stdout.splitlines()[-1])
    assert any(k.startswith("train_loss/web.") for k in train_recs[0])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # Stage 1 started from stage 0's weights: after 6 small Adam steps (lr <= 8e-4) its params
    # are within ~3e-3 of them, where an independent N(0, 0.02) init is ~0.0226 away on average.
    b = nnx.to_pure_dict(nnx.state(load_model(str(base_dir))))
    d = nnx.to_pure_dict(nnx.state(load_model(str(run))))
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.mean(np.abs(x - y))), b, d))
    assert 0 < max(diffs) < 0.006, diffs

    tasks = {k.removeprefix("eval_loss/") for r in recs.values() for k in r
             if k.startswith("eval_loss/")}
    added = {f"web.{x}" for x in OTHER_HIGH_RESOURCE + LOW_RESOURCE}
    assert tasks & added, tasks  # the eval reaches languages the base never saw
    groups = eval_loss_by_group(recs)
    # Independent recomputation: the mean of the logged per-task losses of each group's tasks.
    low = sorted(t for t in tasks if t.removeprefix("web.") in LOW_RESOURCE)
    if low:
        label = next(g for g in groups if g.startswith("low-resource ("))
        assert label == f"low-resource ({len(low)} task{'s' * (len(low) > 1)})"
        assert [s for s, _ in groups[label]] == [0, 3, 6]  # step 0: the base weights
        want = np.mean([recs[6][f"eval_loss/{t}"] for t in low])
        assert abs(groups[label][-1][1] - want) < 1e-9

    png = run / "loss_curve.png"
    assert png.stat().st_size > 10_000
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 1.8 * height  # two panels side by side: all tasks | per group
