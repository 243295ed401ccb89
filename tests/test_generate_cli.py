"""`python -m marco_jax.generate` end to end: HF checkpoint -> converter -> our CLI, against
transformers' `generate` on the same token ids."""

from __future__ import annotations

import pytest
import torch
from hf_fixtures import make_hf_model
from parity_fixtures import rounded_linears, sharpen

from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.data.chat import render_chatml
from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.generate import main

VOCAB_ROWS = 151936  # Qwen2's padded embedding table; ids >= the tokenizer's size are unused


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    hf_dir, hf_model = make_hf_model(tmp, hidden=32, heads=4, kv_heads=2, layers=1, tie=True,
                                     vocab=VOCAB_ROWS, seed=5)
    hf_model = sharpen(hf_model)
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    convert_hf_to_orbax(hf_dir, tmp / "ours")
    return tmp / "ours", hf_model


def hf_continuation(hf_model, ids: list[int], max_new: int, stops: list[int]) -> str:
    tok = get_tokenizer()
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                eos_token_id=stops, pad_token_id=tok.eos_id,
                                suppress_tokens=list(range(tok.vocab_size, VOCAB_ROWS)))
    new = out[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    return tok.decode(new[:cut])


def test_plain_prompts_match_transformers(checkpoint, capsys):
    path, hf_model = checkpoint
    prompts = ["The capital of France is", "Marco-LLM wurde auf vielen Sprachen trainiert und"]
    argv = ["--checkpoint", str(path), "--max-new-tokens", "12"]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    tok = get_tokenizer()
    expected = "".join(
        f"=== [{i}] {p!r}\n{hf_continuation(hf_model, tok.encode(p), 12, [tok.eos_id])}\n"
        for i, p in enumerate(prompts))
    assert printed == expected
    assert len(set(printed.split("\n")[1])) > 3  # not one repeated character


def test_bf16_matmuls_match_transformers_with_rounded_linears(checkpoint, capsys):
    path, hf_model = checkpoint
    prompt = "Once upon a time"
    assert main(["--checkpoint", str(path), "--matmul-dtype", "bfloat16", "--max-new-tokens",
                 "12", "--prompt", prompt]) == 0
    tok = get_tokenizer()
    with rounded_linears():
        expected = hf_continuation(hf_model, tok.encode(prompt), 12, [tok.eos_id])
    assert capsys.readouterr().out == expected + "\n"
    assert len(set(expected)) > 3  # not one repeated character
    # and the rounding matters here: the fp32 continuation differs
    assert expected != hf_continuation(hf_model, tok.encode(prompt), 12, [tok.eos_id])


def test_bf16_weights_with_float32_matmuls_get_one_warning_line(checkpoint, tmp_path, capsys,
                                                                monkeypatch):
    """Without the CPU matmul kernel, bf16 weights under fp32 matmuls are converted on every call:
    one warning line. With it, decoding reads fp32 packed copies made once: no warning."""
    from marco_jax.model.native import kernels_available

    path, _ = checkpoint
    bf16 = tmp_path / "bf16"
    convert_hf_to_orbax(path.parent / "hf", bf16, dtype="bfloat16")
    argv = ["--checkpoint", str(bf16), "--prompt", "Hello", "--max-new-tokens", "2"]
    assert kernels_available()
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 1 and "bfloat16 weights with float32 matmuls on CPU" in err[0], err
    assert "--matmul-dtype=bfloat16" in err[0]
    for quiet in (["--checkpoint", str(path)], ["--checkpoint", str(bf16), "--matmul-dtype",
                                                  "bfloat16"]):
        assert main([*quiet, "--prompt", "Hello", "--max-new-tokens", "2"]) == 0
        assert "warning" not in capsys.readouterr().err


def test_lm_eval_model_logs_the_same_warning_for_bf16_weights(checkpoint, tmp_path, caplog,
                                                               monkeypatch):
    """The lm-eval model (a library class, no CLI) logs the generate CLI's warning line when a
    bf16 checkpoint meets fp32 matmuls, naming its model_args setting; not otherwise."""
    import logging

    from marco_jax.evals.lm_eval_model import MarcoJaxLM

    path, _ = checkpoint
    bf16 = tmp_path / "bf16"
    convert_hf_to_orbax(path.parent / "hf", bf16, dtype="bfloat16")
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")  # with the kernel nothing is converted per call
    with caplog.at_level(logging.WARNING, logger="marco_jax.evals.lm_eval_model"):
        MarcoJaxLM(checkpoint=str(bf16))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "bfloat16 weights with float32 matmuls on CPU" in warned[0]
    assert "model_args matmul_dtype=bfloat16" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="marco_jax.evals.lm_eval_model"):
        MarcoJaxLM(checkpoint=str(path))
        MarcoJaxLM(checkpoint=str(bf16), matmul_dtype="bfloat16")
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_chat_prompt_matches_transformers(checkpoint, capsys):
    path, hf_model = checkpoint
    assert main(["--checkpoint", str(path), "--chat", "--system", "Be brief.",
                 "--prompt", "What is JAX?", "--max-new-tokens", "10"]) == 0
    tok = get_tokenizer()
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is JAX?"}]
    ids = tok.encode(render_chatml(messages, add_generation_prompt=True), allow_special=True)
    assert ids[-3:] == [tok.im_start_id, *tok.encode("assistant\n")]
    expected = hf_continuation(hf_model, ids, 10, [tok.im_end_id, tok.eos_id])
    assert capsys.readouterr().out == expected + "\n"


def test_errors_are_reported(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path), "--prompt", "x"]) == 2
    assert "neither a converted checkpoint (model_config.json) nor a training workdir" in \
        capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path), "--prompt", "x", "--system", "s"]) == 2
    assert "--system needs --chat" in capsys.readouterr().err


def test_sampling_flags_are_validated(checkpoint, capsys):
    path, _ = checkpoint
    assert main(["--checkpoint", str(path), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert main(["--checkpoint", str(path), "--prompt", "x", "--max-new-tokens", "100000"]) == 2
    assert "top_p=1.5" in capsys.readouterr().err
