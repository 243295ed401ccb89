"""The two-stage demo (configs/demo_base.py, then configs/demo.py continuing from it), shrunk to a
few steps: both stages run end to end through the real data pipeline, stage 1 starts from stage
0's weights, and the loss PNG carries the held-out loss per language group."""

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from marco_jax.checkpoint import load_model
from marco_jax.config import load_config_file
from marco_jax.data.languages import LOW_RESOURCE, OTHER_HIGH_RESOURCE
from marco_jax.train.loop import train
from marco_jax.train.metrics import eval_loss_by_group

ROOT = Path(__file__).resolve().parents[1]
SHRINK = [("train.steps", "4"), ("data.seq_len", "32"), ("train.log_every", "2"),
          ("train.eval_every", "2"), ("checkpoint.every", "4"), ("checkpoint.async_save", "false")]


def records(workdir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def test_demo_base_then_continual_pretraining_writes_per_group_curve(tmp_path):
    base_cfg = load_config_file(ROOT / "configs/demo_base.py", SHRINK)
    assert dict(base_cfg.data.shares) == {"english": 0.65, "chinese": 0.35}
    base = train(base_cfg, str(tmp_path / "base"), devices=jax.devices()[:1], progress=False)
    assert base["status"] == "done" and base["step"] == 4
    base_evals = {k for r in records(tmp_path / "base").values() for k in r
                  if k.startswith("eval_loss/")}
    assert base_evals <= {"eval_loss/web.en", "eval_loss/web.zh"}  # stage 0 sees two languages

    cfg = load_config_file(ROOT / "configs/demo.py", SHRINK + [
        ("train.init_from", str(tmp_path / "base")), ("eval.batches", "8"),
        ("train.seed", "1")])  # a random init would now differ from stage 0's
    assert cfg.train.init_from and not cfg.data.shares  # the stage-I mixture, all languages
    run = train(cfg, str(tmp_path / "demo"), devices=jax.devices()[:1], progress=False)
    assert run["status"] == "done" and run["step"] == 4

    # Stage 1 started from stage 0's weights: after 4 small Adam steps (lr <= 8e-4) its params
    # are within ~2e-3 of them, where an independent N(0, 0.02) init is ~0.0226 away on average.
    base_model = load_model(str(tmp_path / "base"))
    demo_model = load_model(str(tmp_path / "demo"))
    b, d = nnx.to_pure_dict(nnx.state(base_model)), nnx.to_pure_dict(nnx.state(demo_model))
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.mean(np.abs(x - y))), b, d))
    assert 0 < max(diffs) < 0.005, diffs

    recs = records(tmp_path / "demo")
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
        assert [s for s, _ in groups[label]] == [0, 2, 4]  # step 0: the base weights
        want = np.mean([recs[4][f"eval_loss/{t}"] for t in low])
        assert abs(groups[label][-1][1] - want) < 1e-9

    png = tmp_path / "demo" / "loss_curve.png"
    assert run["loss_curve"] == str(png) and png.stat().st_size > 10_000
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 1.8 * height  # two panels side by side: all tasks | per group
