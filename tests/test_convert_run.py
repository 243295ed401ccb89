"""A training run -> Hugging Face / converted checkpoint (`python -m marco_jax.convert run-to-*`),
checked against transformers on the exported directory and against the run's own train state;
remote (gs://) path handling of the converter CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
import torch
import transformers
from flax import nnx
from train_fixtures import synthetic_iterators, tiny_config

from marco_jax.checkpoint import load_params, open_run, read_model_config
from marco_jax.checkpoint.streaming import array_spec, kvstore_spec
from marco_jax.convert.__main__ import _parser
from marco_jax.convert.__main__ import main as cli
from marco_jax.convert.from_run import export_run_to_orbax
from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.model.config import from_experiment
from marco_jax.model.qwen2 import init_model
from marco_jax.train.loop import train

VOCAB_ROWS = 151936  # the real Qwen2 table, so `generate` can feed real token ids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run (untied head, checkpoints at steps 1 and 2) of a 2-layer model."""
    workdir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(steps=2)
    o = cfg.model.overrides
    o.vocab_size, o.hidden_size, o.intermediate_size = VOCAB_ROWS, 32, 72
    o.num_attention_heads, o.num_key_value_heads, o.tie_word_embeddings = 4, 2, False
    cfg.data.seq_len, cfg.data.global_batch_size, cfg.train.loss_chunk = 16, 2, 16
    cfg.checkpoint.every, cfg.checkpoint.async_save = 1, False
    train(cfg, str(workdir), iterators=synthetic_iterators, progress=False,
          devices=jax.devices()[:1])
    return workdir, from_experiment(cfg.model)


def state_params(workdir: Path, step: int) -> dict:
    """The step's params item read back by Orbax itself (test-side reference)."""
    path = (workdir / "checkpoints" / str(step) / "params").absolute()
    return ocp.StandardCheckpointer().restore(path)


def our_logits(config, params, tokens) -> np.ndarray:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: init_model(config)))
    nnx.replace_by_pure_dict(state, params)
    return np.asarray(nnx.merge(graphdef, state)(tokens))


def torch_logits(hf_dir: Path, tokens) -> np.ndarray:
    model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def test_run_to_hf_loads_in_transformers_with_our_logits(run, tmp_path):
    workdir, config = run
    assert cli(["run-to-hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf"),
                "--max-shard-size", "10MB"]) == 0  # latest step (2), sharded
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["vocab_size"] == VOCAB_ROWS and not hf_config["tie_word_embeddings"]
    tokens = np.random.RandomState(0).randint(0, VOCAB_ROWS, (2, 13)).astype(np.int32)
    ours = our_logits(config, state_params(workdir, 2), tokens)
    np.testing.assert_allclose(torch_logits(tmp_path / "hf", tokens), ours, atol=1e-4, rtol=0)


def test_run_to_orbax_picks_the_step_and_feeds_generate(run, tmp_path, capsys):
    workdir, config = run
    first, last = state_params(workdir, 1), state_params(workdir, 2)
    export_run_to_orbax(workdir, tmp_path / "step1", step=1)
    assert read_model_config(tmp_path / "step1").replace(param_dtype="float32") == config
    _, got = load_params(tmp_path / "step1")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 got, first)
    assert not np.array_equal(got["model"]["norm"]["scale"], last["model"]["norm"]["scale"])

    # latest step via the CLI; `generate` on it continues a prompt exactly as transformers
    # does on the run-to-hf export of the same step
    assert cli(["run-to-orbax", "--workdir", str(workdir), "--out", str(tmp_path / "ours")]) == 0
    assert cli(["run-to-hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    from marco_jax.generate import main as generate

    prompt = "The capital of France is"
    assert generate(["--checkpoint", str(tmp_path / "ours"), "--prompt", prompt,
                     "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    tok = get_tokenizer()
    ids = tok.encode(prompt)
    hf_model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                eos_token_id=[tok.eos_id], pad_token_id=tok.eos_id,
                                suppress_tokens=list(range(tok.vocab_size, VOCAB_ROWS)))
    new = out[0, len(ids):].tolist()
    new = new[:next((i for i, t in enumerate(new) if t == tok.eos_id), len(new))]
    assert printed == tok.decode(new) + "\n"

    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run_to_orbax(workdir, tmp_path / "ours")
    export_run_to_orbax(workdir, tmp_path / "ours", dtype="bfloat16", overwrite=True)
    _, bf16 = load_params(tmp_path / "ours")
    np.testing.assert_array_equal(np.asarray(bf16["lm_head"]["kernel"]),
                                  np.asarray(last["lm_head"]["kernel"]).astype(
                                      bf16["lm_head"]["kernel"].dtype))
    assert str(bf16["lm_head"]["kernel"].dtype) == "bfloat16"


def test_run_export_errors_name_the_problem(run, tmp_path, capsys):
    workdir, _ = run
    assert open_run(workdir).step == 2
    with pytest.raises(ValueError, match=r"no step 7; have \[1, 2\]"):
        open_run(workdir, step=7)
    assert cli(["run-to-hf", "--workdir", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert "no checkpoints/ (not a training workdir)" in capsys.readouterr().err
    assert cli(["run-to-hf", "--workdir", str(workdir), "--out", "gs://bkt/hf"]) == 2
    assert "written locally" in capsys.readouterr().err


def test_remote_paths_are_kept_and_become_gcs_kvstores(tmp_path, capsys):
    args = _parser().parse_args(["hf-to-orbax", "--hf", "/m", "--out", "gs://bkt/ckpt/qwen"])
    assert args.out == "gs://bkt/ckpt/qwen"  # pathlib would have made it gs:/bkt/...
    args = _parser().parse_args(["run-to-orbax", "--workdir", "gs://bkt/runs/a", "--out", "o"])
    assert args.workdir == "gs://bkt/runs/a"
    assert kvstore_spec("gs://bkt/ckpt/qwen/params/x") == {
        "driver": "gcs", "bucket": "bkt", "path": "ckpt/qwen/params/x"}
    assert kvstore_spec(tmp_path / "a") == {"driver": "file", "path": str(tmp_path / "a")}
    with pytest.raises(ValueError, match="only local paths and gs://"):
        kvstore_spec("s3://bkt/x")
    # Orbax's OCDBT layout (a run's params item) and the per-array one (converted checkpoints)
    key = ("model", "norm", "scale")
    ocdbt = array_spec("gs://bkt/run/checkpoints/2/params", key, use_ocdbt=True, use_zarr3=False)
    assert ocdbt == {"driver": "zarr", "kvstore": {
        "driver": "ocdbt", "base": {"driver": "gcs", "bucket": "bkt",
                                    "path": "run/checkpoints/2/params/"},
        "path": "model.norm.scale"}}
    flat = array_spec("gs://bkt/ckpt/params", key, use_ocdbt=False, use_zarr3=False)
    assert flat["kvstore"] == {"driver": "gcs", "bucket": "bkt",
                               "path": "ckpt/params/model.norm.scale"}
    for spec in (ocdbt, flat):  # tensorstore accepts them (its gcs driver is built in)
        assert ts.Spec(spec).to_json()["kvstore"]
    # a remote HF input is refused with what to do instead
    assert cli(["hf-to-orbax", "--hf", "gs://bkt/Qwen2-7B", "--out", str(tmp_path / "o")]) == 2
    assert "must be a local directory" in capsys.readouterr().err
