"""hf-to-orbax refuses what it must not convert silently (issue 12 item 5 and the convert bits of
item 6): NaN/Inf weights (named tensor; --allow-nonfinite overrides), a non-empty --out without
--overwrite, an unparsable config.json, and a .bin that is not a plain state dict. Each is one line
naming the file or tensor, exit status 2, no traceback."""

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from safetensors.torch import load_file, save_file

from marco_jax.checkpoint import load_params
from marco_jax.convert.__main__ import main as cli


def _cli(capsys, argv: list[str]) -> int:
    capsys.readouterr()  # drop what building the fixture printed (transformers' progress bars)
    return cli(argv)


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("INFO ")]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _poison(hf_dir, name: str, value: float, row: int = 3) -> None:
    """Sets one element of tensor `name` of a single-file safetensors checkpoint to `value`."""
    path = hf_dir / "model.safetensors"
    tensors = load_file(path)
    tensors[name][row, 1] = value
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("name,value", [
    ("model.layers.1.mlp.down_proj.weight", float("nan")),
    ("model.embed_tokens.weight", float("inf")),  # a vocabulary tensor, read in row blocks
])
def test_nonfinite_weights_refused_with_the_tensor_named(tmp_path, capsys, name, value):
    hf_dir, _ = make_hf_model(tmp_path)
    _poison(hf_dir, name, value)
    out = tmp_path / "ours"
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert name in line and ("NaN" in line or "Inf" in line) and "--allow-nonfinite" in line
    assert not out.exists()  # nothing left that looks like a checkpoint


def test_allow_nonfinite_converts_them_as_they_are(tmp_path, capsys):
    hf_dir, _ = make_hf_model(tmp_path)
    name = "model.layers.0.self_attn.q_proj.weight"  # HF [out, in] -> ours [layer, in, out]
    _poison(hf_dir, name, float("nan"), row=5)
    out = tmp_path / "ours"
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(out),
                "--allow-nonfinite"]) == 0
    _, params = load_params(out)
    q = np.asarray(params["model"]["layers"]["self_attn"]["q_proj"]["kernel"])
    layer0 = q[0].reshape(q.shape[1], -1)  # [in, out] (heads x head_dim flattened as in HF)
    assert np.isnan(layer0[1, 5]) and np.isnan(q).sum() == 1


@pytest.mark.parametrize("existing", ["model_config.json", "notes.txt"])
def test_non_empty_out_refused_without_overwrite(tmp_path, capsys, existing):
    hf_dir, _ = make_hf_model(tmp_path)
    out = tmp_path / "ours"
    out.mkdir()
    (out / existing).write_text('{"keep": "me"}')
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == [existing]
    assert (out / existing).read_text() == '{"keep": "me"}'
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "model_config.json").read_text())["hidden_size"] == 48


@pytest.mark.parametrize("text,expected", [
    ('{"hidden_size": 48,', "invalid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"hidden_size": "wide"}', "hidden_size"),
])
def test_bad_config_json_is_one_line_naming_the_file(tmp_path, capsys, text, expected):
    hf_dir, _ = make_hf_model(tmp_path)
    (hf_dir / "config.json").write_text(text)
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert str(hf_dir / "config.json") in line and expected in line


class _Payload:
    """A pickle that would run code when fully unpickled."""

    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def _bin_dir(tmp_path, state) -> object:
    """A HF dir whose weights are pytorch_model.bin holding `state` (torch's zip format)."""
    hf_dir, _ = make_hf_model(tmp_path)
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin")
    return hf_dir


def test_malicious_bin_is_one_line_naming_the_file(tmp_path, capsys):
    hf_dir = _bin_dir(tmp_path, {"model.embed_tokens.weight": _Payload()})
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert str(hf_dir / "pytorch_model.bin") in line and "weights_only" in line


@pytest.mark.parametrize("state", [[1, 2, 3], {"model.embed_tokens.weight": "text"}])
def test_bin_that_is_not_a_state_dict_is_one_line(tmp_path, capsys, state):
    hf_dir = _bin_dir(tmp_path, state)
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert str(hf_dir / "pytorch_model.bin") in line and "state dict" in line


def test_bin_that_is_not_a_torch_file_is_one_line(tmp_path, capsys):
    hf_dir = _bin_dir(tmp_path, {})
    (hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1})[:5])  # truncated junk
    assert _cli(capsys, ["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert str(hf_dir / "pytorch_model.bin") in line
    assert zipfile.is_zipfile(hf_dir / "pytorch_model.bin") is False
