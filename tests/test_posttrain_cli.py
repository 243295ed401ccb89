"""`python -m marco_jax.sft` then `python -m marco_jax.dpo` from it (reference log-probs
precomputed), end to end on the shipped data; both runs export with `convert run-to-hf` and
transformers loads the result with the same logits; a config for another objective is refused."""

import json

import numpy as np
import pytest
import torch
import transformers

from marco_jax.checkpoint import load_model
from marco_jax.convert.__main__ import main as convert_cli
from marco_jax.dpo import main as dpo_cli
from marco_jax.sft import main as sft_cli

COMMON = ["--config.data.global_batch_size=8", "--config.train.epochs=1",
          "--config.data.seq_len=128", "--config.train.loss_chunk=32", "--config.train.log_every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("posttrain")
    assert sft_cli(["--config", "configs/sft_demo.py", "--workdir", str(root / "sft"),
                    "--config.train.init_from=", *COMMON]) == 0
    assert dpo_cli(["--config", "configs/dpo_demo.py", "--workdir", str(root / "dpo"),
                    f"--config.train.init_from={root / 'sft'}", *COMMON]) == 0
    return root


def test_sft_then_dpo_runs_report_and_plot(runs):
    sft = [json.loads(x) for x in (runs / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("loss/") for r in sft for k in r)  # per-language loss
    dpo = [json.loads(x) for x in (runs / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["rewards/accuracies"] <= 1.0 for r in dpo if "rewards/accuracies" in r)
    assert list(runs.glob("dpo/*.ref_logps.*.npz"))  # stored in the workdir (package data)
    assert (runs / "dpo" / "dpo_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((runs / "dpo" / "report.json").read_text())["objective"] == "dpo"


@pytest.mark.parametrize("run", ["sft", "dpo"])
def test_run_to_hf_loads_in_transformers(runs, run):
    out = runs / f"{run}_hf"
    assert convert_cli(["run-to-hf", "--workdir", str(runs / run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_model(runs / run)
    tokens = np.random.default_rng(0).integers(0, 151643, (1, 24))
    with torch.no_grad():
        want = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(tokens)), want, atol=1e-4, rtol=1e-4)


def test_a_config_for_another_objective_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        sft_cli(["--config", "configs/dpo_demo.py", "--workdir", "/tmp/never"])
    assert e.value.code == 2 and "train.objective='dpo'" in capsys.readouterr().err


@pytest.mark.parametrize("cli, config, flag, key", [
    (sft_cli, "configs/sft_demo.py", "--config.data.sft_files={missing}", "data.sft_files"),
    (sft_cli, "configs/sft_demo.py", "--config.data.eval_files={missing}", "data.eval_files"),
    (dpo_cli, "configs/dpo_demo.py", "--config.dpo.train_file={missing}", "dpo.train_file"),
], ids=["sft_files", "eval_files", "dpo_train_file"])
def test_a_data_file_that_matches_nothing_is_named_by_its_key(tmp_path, capsys, cli, config,
                                                              flag, key):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SystemExit) as e:
        cli(["--config", config, "--workdir", str(tmp_path / "run"),
             "--config.train.init_from=", "--config.dpo.reference=none",
             flag.format(missing=missing)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {key}: no files match '{missing}'"
    assert not (tmp_path / "run").exists()
