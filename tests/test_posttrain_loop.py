"""SFT and DPO through the one training loop on the shipped sample data: per-language metrics
logged, DPO accuracy reaches 1.0, and a preempted run resumed from its checkpoint equals the
uninterrupted one bit for bit (the iterator state is just the step)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_fixtures import tiny_config

from marco_jax.data.post_training import StepIterator, dpo_batches, read_dpo_pairs, sft_batches
from marco_jax.train.dpo import DPOConfig, DPOObjective
from marco_jax.train.loop import train
from marco_jax.train.sft import SFTObjective

SAMPLE = Path(__file__).resolve().parents[1] / "marco_jax" / "sample_data"
LANGUAGES = ("en", "de", "zh", "ja")
VOCAB = 512  # tiny_config's vocabulary: token ids are folded into it
ONE = jax.devices()[:1]
pytestmark = pytest.mark.slow


class Folded:
    """A StepIterator whose token ids are folded into the tiny vocabulary; optionally sends
    SIGTERM (preemption) when asked for batch `stop_at`."""

    def __init__(self, it: StepIterator, stop_at: int = -1):
        self.it, self.stop_at = it, stop_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.it.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        b = dict(next(self.it))
        b["tokens"], b["targets"] = b["tokens"] % VOCAB, b["targets"] % VOCAB
        return b

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def sft_setup(steps: int):
    config = tiny_config(steps)
    config.data.seq_len = 128
    batches, _ = sft_batches([str(SAMPLE / "sft" / "sharegpt.jsonl")], LANGUAGES, 128, 8)
    return config, SFTObjective(LANGUAGES, loss_chunk=16), batches


def dpo_setup(steps: int):
    config = tiny_config(steps)
    config.data.seq_len = 128
    pairs, _ = read_dpo_pairs(str(SAMPLE / "dpo" / "pairs.jsonl"), 128)
    batches = dpo_batches(pairs, LANGUAGES, 128, pairs_per_row=2, global_batch=8)
    objective = DPOObjective(DPOConfig(reference="model"), 2, LANGUAGES, loss_chunk=16)
    return config, objective, batches


def run(setup, steps, workdir, stop_at=-1):
    config, objective, batches = setup(steps)

    def iterators(cfg, process_index, process_count):
        return Folded(StepIterator(batches, process_index, process_count), stop_at), None
    return train(config, str(workdir), objective=objective, iterators=iterators,
                 progress=False, devices=ONE)


def metrics(workdir):
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


def final_params(workdir, step):
    path = Path(workdir).absolute() / "checkpoints" / str(step) / "params"
    return ocp.StandardCheckpointer().restore(path)


@pytest.mark.parametrize("setup", [sft_setup, dpo_setup], ids=["sft", "dpo"])
def test_preempted_run_resumes_bit_identically(setup, tmp_path):
    steps = 8
    ref = run(setup, steps, tmp_path / "ref")
    assert ref["status"] == "done"
    stopped = run(setup, steps, tmp_path / "run", stop_at=4)
    assert stopped["status"] == "preempted"
    resumed = run(setup, steps, tmp_path / "run")
    assert resumed["status"] == "done" and resumed["start_step"] == stopped["step"]
    ref_m = {m["step"]: m for m in metrics(tmp_path / "ref")}
    for m in metrics(tmp_path / "run"):
        assert m["loss"] == ref_m[m["step"]]["loss"], m["step"]
    for x, y in zip(jax.tree.leaves(final_params(tmp_path / "ref", steps)),
                    jax.tree.leaves(final_params(tmp_path / "run", steps)), strict=True):
        np.testing.assert_array_equal(x, y)
    last = metrics(tmp_path / "ref")[-1]
    if setup is dpo_setup:
        assert last["rewards/accuracies"] == 1.0 and last["rewards/margins"] > 0.5
        assert {"rewards/margins/en", "rewards/accuracies/de", "logps/chosen/zh"} <= set(last)
    else:
        assert last["loss"] < metrics(tmp_path / "ref")[0]["loss"]
        assert {"loss/en", "loss/de", "loss/zh", "loss/ja"} <= set(last)
