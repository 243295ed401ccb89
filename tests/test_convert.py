"""HF <-> our checkpoint conversion, checked against transformers as the reference."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_fixtures import make_hf_model
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.torch import load_file, save_file

from marco_jax.checkpoint import load_model, load_params, save_params
from marco_jax.convert.__main__ import main as cli
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.convert.ours_to_hf import export_orbax_to_hf
from marco_jax.model import get_preset, init_model

ROPE_THETA = 50_000.0  # not transformers' default, so a dropped rope setting would show


def _hf_tensors(directory) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, (2, 13)).astype(np.int32)


def _torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


CASES = {  # hidden sizes that are not powers of two; GQA and MHA; sharded and single-file
    "untied-sharded": dict(hidden=48, heads=6, kv_heads=2, layers=3, tie=False,
                           max_shard_size="20KB"),
    "tied-single": dict(hidden=40, heads=5, kv_heads=5, layers=2, tie=True),
}


@pytest.mark.parametrize("case", CASES)
def test_hf_round_trip(tmp_path, case):
    kw = CASES[case]
    hf_dir, hf_model = make_hf_model(tmp_path, vocab=150, seed=1, rope_theta=ROPE_THETA, **kw)
    assert (hf_dir / "model.safetensors.index.json").exists() == ("max_shard_size" in kw)

    assert cli(["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "ours")]) == 0
    model = load_model(tmp_path / "ours")
    tokens = _tokens(150)
    ref = _torch_logits(hf_model, tokens)
    np.testing.assert_allclose(np.asarray(model(tokens)), ref, atol=1e-4, rtol=0)

    assert cli(["orbax-to-hf", "--checkpoint", str(tmp_path / "ours"), "--out",
                str(tmp_path / "back"), "--max-shard-size", "30KB"]) == 0
    assert (tmp_path / "back" / "model.safetensors.index.json").exists()
    original, exported = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(exported) == sorted(original)
    assert ("lm_head.weight" in exported) == (not kw["tie"])
    for name, t in original.items():
        assert exported[name].dtype == t.dtype and torch.equal(exported[name], t), name

    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert reloaded.config.rope_parameters["rope_theta"] == ROPE_THETA
    assert reloaded.config.tie_word_embeddings == kw["tie"]
    np.testing.assert_array_equal(_torch_logits(reloaded, tokens), ref)


def test_bf16_round_trip_is_bit_exact_and_dtype_option_casts(tmp_path):
    hf_dir, hf_model = make_hf_model(tmp_path, dtype=torch.bfloat16, tie=False, seed=2)
    config = convert_hf_to_orbax(hf_dir, tmp_path / "ours")
    assert config.param_dtype == "bfloat16"
    _, params = load_params(tmp_path / "ours")
    assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
    export_orbax_to_hf(tmp_path / "ours", tmp_path / "back")
    original, exported = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(original) == sorted(exported)
    for name, t in original.items():
        assert exported[name].dtype == torch.bfloat16
        assert torch.equal(exported[name].view(torch.int16), t.view(torch.int16)), name

    convert_hf_to_orbax(hf_dir, tmp_path / "ours32", dtype="float32")
    _, params32 = load_params(tmp_path / "ours32")
    for a, b in zip(jax.tree.leaves(params32), jax.tree.leaves(params), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float32))
    # fp32 (exactly representable bf16 values) exported with dtype=bfloat16: bits match again.
    export_orbax_to_hf(tmp_path / "ours32", tmp_path / "back16", dtype="bfloat16")
    for name, t in _hf_tensors(tmp_path / "back16").items():
        assert torch.equal(t.view(torch.int16), original[name].view(torch.int16)), name


def test_bad_checkpoint_lists_every_problem_in_one_error(tmp_path):
    hf_dir, _ = make_hf_model(tmp_path, hidden=48, heads=6, kv_heads=2, layers=2, tie=True)
    tensors = load_file(hf_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(3, 4)
    tensors["model.norm.weight"] = torch.zeros(47)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        convert_hf_to_orbax(hf_dir, tmp_path / "ours")
    msg = str(err.value)
    assert "missing model.layers.1.mlp.up_proj.weight (expected shape [104, 48])" in msg
    assert "unexpected model.layers.0.mlp.extra.weight (shape [3, 4])" in msg
    assert "mis-shaped model.norm.weight: shape [47], expected [48]" in msg
    assert not (tmp_path / "ours" / "params").exists()


def test_tied_checkpoint_with_lm_head(tmp_path):
    hf_dir, hf_model = make_hf_model(tmp_path, tie=True)
    tensors = load_file(hf_dir / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})
    convert_hf_to_orbax(hf_dir, tmp_path / "ours")  # equal head: accepted and skipped
    tokens = _tokens(160)
    np.testing.assert_allclose(np.asarray(load_model(tmp_path / "ours")(tokens)),
                               _torch_logits(hf_model, tokens), atol=1e-4, rtol=0)

    tensors["lm_head.weight"][5, 0] += 1.0
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        convert_hf_to_orbax(hf_dir, tmp_path / "ours2")


def test_vocab_padding_and_trimming(tmp_path):
    hf_dir, hf_model = make_hf_model(tmp_path, tie=False, vocab=150)
    config = convert_hf_to_orbax(hf_dir, tmp_path / "ours", vocab_multiple=64)
    assert config.vocab_size == 192
    _, params = load_params(tmp_path / "ours")
    embed = np.asarray(params["model"]["embed_tokens"]["embedding"])
    head = np.asarray(params["lm_head"]["kernel"])
    original = _hf_tensors(hf_dir)
    np.testing.assert_array_equal(embed[:150], original["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(head[:, :150], original["lm_head.weight"].numpy().T)
    assert not embed[150:].any() and not head[:, 150:].any()
    tokens = _tokens(150)
    logits = np.asarray(load_model(tmp_path / "ours")(tokens))
    np.testing.assert_allclose(logits[..., :150], _torch_logits(hf_model, tokens), atol=1e-4,
                               rtol=0)

    convert_hf_to_orbax(hf_dir, tmp_path / "trimmed", vocab_size=100)
    config, params = load_params(tmp_path / "trimmed")
    assert config.vocab_size == 100
    np.testing.assert_array_equal(np.asarray(params["model"]["embed_tokens"]["embedding"]),
                                  original["model.embed_tokens.weight"].numpy()[:100])


def test_torch_bin_checkpoint_matches_safetensors(tmp_path):
    hf_dir, _ = make_hf_model(tmp_path, tie=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), bin_dir / "pytorch_model.bin")
    convert_hf_to_orbax(hf_dir, tmp_path / "a")
    convert_hf_to_orbax(bin_dir, tmp_path / "b")
    _, a = load_params(tmp_path / "a")
    _, b = load_params(tmp_path / "b")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_restore_onto_mesh_gives_identical_values(tmp_path):
    assert len(jax.devices()) == 8, "conftest sets 8 host devices"
    hf_dir, _ = make_hf_model(tmp_path, hidden=48, heads=8, kv_heads=4, layers=4, tie=False,
                              vocab=96)
    convert_hf_to_orbax(hf_dir, tmp_path / "ours")
    _, reference = load_params(tmp_path / "ours")
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("fsdp", "tensor"))

    def spec(a):  # shard the first axis over fsdp and the last over tensor where they divide
        axes = [None] * a.ndim
        if a.shape[0] % 2 == 0:
            axes[0] = "fsdp"
        if a.ndim > 1 and a.shape[-1] % 4 == 0:
            axes[-1] = "tensor"
        return NamedSharding(mesh, P(*axes))

    shardings = jax.tree.map(spec, reference)
    _, params = load_params(tmp_path / "ours", shardings)
    for got, want, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(reference),
                                   jax.tree.leaves(shardings), strict=True):
        assert got.sharding == sharding
        assert len(got.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert sum(s.spec != P() for s in jax.tree.leaves(shardings)) >= 10


def test_orbax_saved_params_export_to_transformers(tmp_path):
    """save_params (Orbax's own OCDBT layout) -> export -> transformers gives our logits."""
    config = get_preset("tiny", vocab_size=128, hidden_size=48, intermediate_size=80,
                        num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=False)
    model = init_model(config, seed=3)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_params(tmp_path / "ours", config, params)
    assert json.loads((tmp_path / "ours" / "params" / "_METADATA").read_text())["use_ocdbt"]
    _, restored = load_params(tmp_path / "ours")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 restored, params)
    export_orbax_to_hf(tmp_path / "ours", tmp_path / "hf")
    hf_model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = _tokens(128)
    np.testing.assert_allclose(_torch_logits(hf_model, tokens), np.asarray(model(tokens)),
                               atol=1e-4, rtol=0)


def test_cli_reports_missing_inputs(tmp_path, capsys):
    assert cli(["hf-to-orbax", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli(["orbax-to-hf", "--checkpoint", str(tmp_path / "nope"), "--out",
                str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "20").mkdir(parents=True)  # a training workdir
    assert cli(["orbax-to-hf", "--checkpoint", str(tmp_path / "run"), "--out",
                str(tmp_path / "o")]) == 2
    assert "a training workdir, not a converted checkpoint; export it with run-to-hf" in \
        capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
         "num_hidden_layers": 1, "num_attention_heads": 2}))
    assert cli(["hf-to-orbax", "--hf", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
