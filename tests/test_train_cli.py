"""The train CLI's placeholder-path and bad-path errors, the CPT configs' budgets, and
initialising from a converted checkpoint / from a previous run (the demo run itself:
tests/test_demo.py)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from train_fixtures import synthetic_iterators, tiny_config

from marco_jax.config import load_config_file as load_config
from marco_jax.model.config import from_experiment
from marco_jax.model.qwen2 import init_model
from marco_jax.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
ONE = jax.devices()[:1]


def test_cli_names_placeholder_paths():
    cmd = [sys.executable, "-m", "marco_jax.train", "--config",
           str(ROOT / "configs/cpt_7b_stage1.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "YOUR_BUCKET" in out.stderr and "train.init_from" in out.stderr


def test_closing_line_shows_the_train_and_held_out_losses():
    from marco_jax.train.cli import closing_losses

    both = {"first_loss": 3.82521, "last_loss": 4.328, "first_eval_loss": 5.1,
            "last_eval_loss": 4.75}
    assert closing_losses(both) == (", train loss 3.8252 -> 4.3280, "
                                    "held-out loss 5.1000 -> 4.7500")
    assert closing_losses({"first_loss": 2.0, "last_loss": 1.0}) == ", train loss 2.0000 -> 1.0000"
    assert closing_losses({"first_loss": 2.0, "first_eval_loss": 1.0}) == ""  # no last values


@pytest.mark.parametrize("flag, expected", [
    ("--config.train.init_from={tmp}/nope",
     "error: train.init_from={tmp}/nope: neither a converted checkpoint (model_config.json) nor "
     "a training workdir (checkpoints/)"),
    ("--workdir=/proc/no_such_dir/run",
     "error: --workdir /proc/no_such_dir/run is not writable (No such file or directory)"),
], ids=["init_from", "workdir"])
def test_bad_paths_are_one_line_naming_the_key_and_leave_no_workdir(tmp_path, flag, expected):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "marco_jax.train", "--config",
           str(ROOT / "configs/demo_base.py"), f"--workdir={workdir}", flag.format(tmp=tmp_path)]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user's demo run
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    assert out.stderr.strip() == expected.format(tmp=tmp_path)
    assert not workdir.exists()


@pytest.mark.parametrize("size", ["0.5b", "1.5b", "7b", "72b"])
def test_cpt_configs_follow_the_paper(size):
    s1 = load_config(ROOT / f"configs/cpt_{size}_stage1.py")
    s2 = load_config(ROOT / f"configs/cpt_{size}_stage2.py")
    for cfg, tokens, lr, mix in ((s1, 160e9, 1e-5, "marco_stage1"),
                                 (s2, 140e9, 6e-6, "marco_stage2")):
        per_step = cfg.data.global_batch_size * cfg.data.seq_len
        assert tokens <= cfg.train.steps * per_step < tokens + per_step
        assert cfg.optim.peak_lr == lr and cfg.data.mixture == mix
        assert from_experiment(cfg.model).num_hidden_layers > 0
    assert s2.train.init_from == s1.train.workdir  # stage II continues stage I's final state


def _params(model_cfg, seed):
    return nnx.to_pure_dict(nnx.split(init_model(model_cfg, seed=seed))[1])


def _final_params(workdir, step):
    import orbax.checkpoint as ocp

    path = Path(workdir) / "checkpoints" / str(step) / "params"
    return ocp.StandardCheckpointer().restore(path.absolute())


def test_init_from_converted_checkpoint_and_from_previous_run(tmp_path):
    from marco_jax.checkpoint import save_params

    cfg = tiny_config(steps=1)
    model_cfg = from_experiment(cfg.model)
    source = _params(model_cfg, seed=7)
    save_params(tmp_path / "converted", model_cfg, source)
    cfg.optim.peak_lr, cfg.optim.warmup_steps = 0.0, 0  # lr 0: params must come out unchanged
    cfg.train.init_from = str(tmp_path / "converted")
    train(cfg, str(tmp_path / "stage1"), iterators=synthetic_iterators, progress=False,
          devices=ONE)
    got = _final_params(tmp_path / "stage1", 1)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(source), strict=True):
        np.testing.assert_array_equal(a, b)

    cfg.train.init_from = str(tmp_path / "stage1")  # a training workdir, as stage II uses
    train(cfg, str(tmp_path / "stage2"), iterators=synthetic_iterators, progress=False,
          devices=ONE)
    for a, b in zip(jax.tree.leaves(_final_params(tmp_path / "stage2", 1)),
                    jax.tree.leaves(source), strict=True):
        np.testing.assert_array_equal(a, b)

    wrong = tiny_config(steps=1)
    wrong.model.overrides.num_hidden_layers = 3
    wrong.train.init_from = str(tmp_path / "converted")
    with pytest.raises(ValueError, match="num_hidden_layers: checkpoint 2, run 3"):
        train(wrong, str(tmp_path / "bad"), iterators=synthetic_iterators, progress=False,
              devices=ONE)


def test_run_stops_with_a_clear_message_after_too_many_bad_steps(tmp_path):
    from marco_jax.checkpoint import save_params
    from marco_jax.train.hooks import TooManyBadSteps

    cfg = tiny_config(steps=6)
    cfg.train.max_bad_steps = 2
    model_cfg = from_experiment(cfg.model)
    params = _params(model_cfg, seed=0)
    params["model"]["norm"]["scale"] = params["model"]["norm"]["scale"].at[3].set(np.nan)
    save_params(tmp_path / "broken", model_cfg, params)
    cfg.train.init_from = str(tmp_path / "broken")
    with pytest.raises(TooManyBadSteps, match="2 steps had non-finite gradients"):
        train(cfg, str(tmp_path / "run"), iterators=synthetic_iterators, progress=False,
              devices=ONE)
    assert (tmp_path / "run" / "checkpoints" / "2").exists()  # state saved where it stopped
