"""`model.matmul_dtype=bfloat16` with float32 compute: matmul operands rounded to bf16, products
accumulated in fp32 (marco_jax/model/matmul.py).

References: float64 numpy on the bf16-rounded operands (the matmul and both of its gradients,
the fused lm-head loss and its gradients), transformers' Qwen2 with every `nn.Linear` (lm head
included) computing on bf16-rounded inputs and weights (logits and greedy decoding), and the
compiled CPU program (every dot of the forward and backward pass takes bf16 operands).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights, rounded_linears, sharpen

from marco_jax.infer import generate
from marco_jax.model.config import get_preset
from marco_jax.model.logprobs import token_nll, weighted_nll_sum
from marco_jax.model.matmul import dot_rows_padded, flat_matmul
from marco_jax.model.qwen2 import init_model

BF16 = jnp.bfloat16
ROOT = Path(__file__).resolve().parents[1]


def rounded(a) -> np.ndarray:
    """a rounded to bf16, as float64."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(BF16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("contract_dims", [1, 2])
def test_flat_matmul_and_its_gradients_use_rounded_operands(rows, contract_dims):
    rng = np.random.default_rng(rows + 10 * contract_dims)
    kernel_shape = (4, 12, 40) if contract_dims == 2 else (48, 5, 8)
    x = rng.standard_normal((2, rows, *kernel_shape[:contract_dims])).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    y, vjp = jax.vjp(lambda a, k: flat_matmul(a, k, contract_dims, BF16), x, kernel)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk = vjp(g)
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32

    k_in = int(np.prod(kernel_shape[:contract_dims]))
    x2, k2, g2 = (rounded(x).reshape(-1, k_in), rounded(kernel).reshape(k_in, -1),
                  rounded(g).reshape(2 * rows, -1))
    np.testing.assert_allclose(np.asarray(y).reshape(2 * rows, -1), x2 @ k2, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx).reshape(2 * rows, -1), g2 @ k2.T, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(dk).reshape(k_in, -1), x2.T @ g2, rtol=1e-5,
                               atol=1e-5)
    # The rounding is real: the unrounded float32 product differs by far more.
    exact = x.reshape(-1, k_in).astype(np.float64) @ kernel.reshape(k_in, -1)
    assert np.abs(exact - x2 @ k2).max() > 100 * np.abs(np.asarray(y).reshape(2 * rows, -1)
                                                        - x2 @ k2).max()


def test_a_single_row_flat_matmul_and_its_gradients_use_rounded_operands():
    """One row (batch-1 decoding) takes the padded forward and the outer-product weight
    gradient."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 48)).astype(np.float32)
    kernel = rng.standard_normal((48, 40)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, k: flat_matmul(a, k, 1, BF16), x, kernel)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk = vjp(g)
    np.testing.assert_allclose(np.asarray(y), rounded(x) @ rounded(kernel), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), rounded(g) @ rounded(kernel).T, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(dk), rounded(x).T @ rounded(g), rtol=1e-5, atol=1e-5)


def test_bf16_compute_rounds_the_result_and_keeps_the_default_operands():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 32)), BF16)
    kernel = jnp.asarray(rng.standard_normal((32, 24)), BF16)
    y = flat_matmul(x, kernel, 1)
    assert y.dtype == BF16
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(jnp.asarray(rounded(x) @ rounded(kernel),
                                                         jnp.float32).astype(BF16), np.float32))


def test_a_single_padded_row_equals_the_row_of_a_two_row_product():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.standard_normal((2, 64)), BF16)
    head = jnp.asarray(rng.standard_normal((64, 300)), BF16)
    one = np.asarray(dot_rows_padded(hidden[:1], head))
    assert one.shape == (1, 300) and one.dtype == np.float32
    np.testing.assert_array_equal(one, np.asarray(dot_rows_padded(hidden, head))[:1])
    np.testing.assert_allclose(one, rounded(hidden[:1]) @ rounded(head), rtol=1e-5, atol=1e-5)


def test_float32_operands_under_bf16_compute_keep_the_weights_unrounded():
    """dtype=bfloat16, matmul_dtype=float32: activations are bf16 values, the fp32 weights are
    used as they are, and the result is rounded to bf16 once."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((5, 32)), BF16)
    kernel = jnp.asarray(rng.standard_normal((32, 24)), jnp.float32)
    y, vjp = jax.vjp(lambda a, k: flat_matmul(a, k, 1, jnp.float32), x, kernel)
    assert y.dtype == BF16
    want = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(jnp.asarray(want, jnp.float32).astype(BF16),
                                             np.float32))
    dx, dk = vjp(jnp.ones_like(y))
    assert dx.dtype == BF16 and dk.dtype == jnp.float32


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
    """(lhs type, rhs type) of every dot in an optimized HLO module's text."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    types.update(re.findall(r"([\w.\-]+): (\w+)\[", hlo))  # fused computations' parameters
    dots = re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    return [(types[a], types[b]) for a, b in dots]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's lowering")
def test_cpu_forward_and_backward_dots_take_bf16_operands():
    """XLA:CPU upcasts a bf16 dot to fp32 unless both operands are bf16, the result is fp32 and
    the left operand is contracted on its last axis; the weight gradient needs the transposed
    copy (marco_jax/model/matmul.py). A float32 dot here would still be correct, only slow."""
    x = jnp.ones((512, 64), jnp.float32)
    kernel = jnp.ones((64, 128), jnp.float32)

    def loss(a, k):
        return jnp.sum(jnp.tanh(flat_matmul(a, k, 1, BF16)))

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    operands = _dot_operand_types(hlo)
    assert len(operands) == 3, operands  # forward, input gradient, weight gradient
    assert all(pair == ("bf16", "bf16") for pair in operands), operands

    reference = jax.jit(jax.grad(lambda a, k: jnp.sum(jnp.tanh(a @ k)), argnums=(0, 1)))
    operands = _dot_operand_types(reference.lower(x, kernel).compile().as_text())
    assert operands == [("f32", "f32")] * 3, operands


def head_reference(h64: np.ndarray, k64: np.ndarray, targets: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-token nll of logits h64 @ k64, and its gradient w.r.t. the logits
    (softmax - onehot(target))."""
    logits = h64 @ k64
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return nll, np.exp(logits - logz[..., None]) - np.eye(k64.shape[1])[targets]


def test_fused_loss_head_gradients_use_rounded_operands():
    rng = np.random.default_rng(2)
    b, t, e, v = 2, 8, 16, 50
    hidden = rng.standard_normal((b, t, e)).astype(np.float32)
    kernel = rng.standard_normal((e, v)).astype(np.float32) * 0.5
    targets = rng.integers(0, v, (b, t))
    weights = (rng.random((b, t)) > 0.2).astype(np.float32)

    def loss(h, k):
        return weighted_nll_sum(h, k.astype(BF16), jnp.asarray(targets), jnp.asarray(weights),
                                4)[0]

    value, (d_h, d_k) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel)
    h64, k64 = rounded(hidden), rounded(kernel)
    nll, d_nll_d_logits = head_reference(h64, k64, targets)
    np.testing.assert_allclose(float(value), (weights * nll).sum(), rtol=1e-5)
    d_logits = rounded(d_nll_d_logits * weights[..., None])
    # d_logits is rounded to bf16 from fp32 values here, float64 ones in the reference: a few
    # land on the other side of a rounding boundary (one bf16 ulp, 0.4% of that element).
    # The kernel's gradient arrives through its bf16 copy, so it is rounded to bf16 as well.
    d_k_want = rounded(np.einsum("bte,btv->ev", h64, d_logits))
    for got, want in ((d_h, d_logits @ k64.T), (d_k, d_k_want)):
        err = np.abs(np.asarray(got) - want) / (np.abs(want) + 1e-2)
        assert err.max() < 1e-2 and (err > 1e-4).mean() < 0.02, (err.max(), (err > 1e-4).mean())


def test_token_nll_gradients_with_a_bf16_kernel():
    """The DPO / scoring path (autodiff through rematerialised chunks) with a bf16 head."""
    rng = np.random.default_rng(3)
    b, t, e, v, chunk = 2, 32, 16, 50, 2
    hidden = rng.standard_normal((b, t, e)).astype(np.float32)
    kernel = rng.standard_normal((e, v)).astype(np.float32) * 0.5
    targets = rng.integers(0, v, (b, t))
    cot = rng.standard_normal((b, t)).astype(np.float32)

    def loss(h, k):
        return jnp.sum(token_nll(h, k.astype(BF16), jnp.asarray(targets), chunk) * cot)

    value, (d_h, d_k) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel)
    h64, k64 = rounded(hidden), rounded(kernel)
    nll, d_nll_d_logits = head_reference(h64, k64, targets)
    np.testing.assert_allclose(float(value), (cot * nll).sum(), rtol=1e-5)
    d_logits = d_nll_d_logits * cot[..., None]
    # Each chunk's kernel gradient leaves its bf16 matmul rounded to bf16; the chunks are summed
    # in fp32 (summed in bf16, the 16 chunks' terms were off by up to 45% of the result).
    d_k_want = rounded(sum(rounded(np.einsum("bte,btv->ev", h64[:, i:i + chunk],
                                             d_logits[:, i:i + chunk]))
                           for i in range(0, t, chunk)))
    for got, want in ((d_h, d_logits @ k64.T), (d_k, d_k_want)):
        err = np.abs(np.asarray(got) - want) / (np.abs(want) + 1e-2)
        assert err.max() < 1e-2, err.max()  # bf16 rounding of the gradients, no more


def test_train_cli_warns_about_bf16_matmuls_without_amx(monkeypatch, capsys):
    from marco_jax.train import cli

    monkeypatch.setattr(cli, "cpu_has_amx", lambda: False)
    cli.warn_slow_matmul_dtype("bfloat16")
    assert "without AMX" in capsys.readouterr().err
    cli.warn_slow_matmul_dtype("")
    monkeypatch.setattr(cli, "cpu_has_amx", lambda: True)
    cli.warn_slow_matmul_dtype("bfloat16")
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    _, hf_model = make_hf_model(tmp_path_factory.mktemp("mm"), hidden=40, heads=4, kv_heads=2,
                                layers=2, tie=True, vocab=160, seed=5)
    hf_model = sharpen(hf_model)
    return (hf_model, load_hf_weights(hf_model, matmul_dtype="bfloat16"),
            load_hf_weights(hf_model))


def test_logits_match_transformers_with_rounded_linears(hf_pair):
    hf_model, ours, ours_f32 = hf_pair
    tokens = np.random.default_rng(3).integers(0, 160, (2, 48))
    with torch.no_grad(), rounded_linears():
        ref = hf_model(torch.tensor(tokens)).logits.numpy()
    with torch.no_grad():
        ref_f32 = hf_model(torch.tensor(tokens)).logits.numpy()
    diff = np.abs(np.asarray(ours(jnp.asarray(tokens))) - ref)
    rounding = np.abs(ref_f32 - ref)  # what the bf16 rounding itself changes
    # Most logits agree to fp32 accuracy; a few differ where an activation computed in another
    # order lands on the other side of a bf16 rounding boundary, and that propagates.
    assert np.median(diff) < 1e-6 and (diff > 1e-4).mean() < 0.05, (diff.max(), diff.mean())
    assert diff.max() < 5e-3 and diff.mean() < rounding.mean() / 50, (diff.mean(),
                                                                     rounding.mean())
    assert np.abs(np.asarray(ours_f32(jnp.asarray(tokens))) - ref_f32).max() < 1e-4


def test_greedy_decoding_matches_transformers_with_rounded_linears(hf_pair):
    """Batch 2 (batch 1, the padded one-row head, is `test_generate_cli.py`'s bf16 case)."""
    hf_model, ours, _ = hf_pair
    prompt = np.random.default_rng(6).integers(2, 160, (2, 12))
    got = generate(ours, prompt, 16, eos_ids=()).tokens
    with torch.no_grad(), rounded_linears():
        ref = hf_model.generate(torch.tensor(prompt), max_new_tokens=16, do_sample=False,
                                pad_token_id=0, eos_token_id=None)[:, 12:].numpy()
    assert len(set(ref[0].tolist())) >= 4, ref  # a constant continuation would prove little
    np.testing.assert_array_equal(np.asarray(got), ref)
    with torch.no_grad():  # and the rounding matters here: fp32 decodes differently
        ref_f32 = hf_model.generate(torch.tensor(prompt), max_new_tokens=16, do_sample=False,
                                    pad_token_id=0, eos_token_id=None)[:, 12:].numpy()
    assert not np.array_equal(ref_f32, ref)


def test_unknown_matmul_dtype_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "marco_jax.train", "--config",
                          str(ROOT / "configs" / "demo.py"), "--workdir", "/tmp/never",
                          "--config.model.matmul_dtype=bf16"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "model.matmul_dtype" in lines[-1], lines[-1]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("batch", [1, 2])
def test_bf16_decoding_holds_no_float32_copy_of_the_weights(batch, decode_programs):
    """XLA:CPU upcasts a bf16 gather and a one-row bf16 dot to float32, and hoists the weight
    converts out of the decode loop: every `generate` call held a float32 copy of the embedding
    table (and at batch 1 of every Linear) until `Embed` tied the table to the token ids and
    `dot_rows_padded` padded one row to two. The compiled program's temporaries say which."""
    from flax import nnx

    config = get_preset("tiny", vocab_size=8192, param_dtype="bfloat16",
                        matmul_dtype="bfloat16")
    model = init_model(config)
    prompts = np.tile(np.arange(3, 11), (batch, 1))
    tokens = generate(model, prompts, 4, eos_ids=()).tokens
    assert np.asarray(tokens).shape == (batch, 4) and len(decode_programs) == 1
    temp = decode_programs[0].memory_analysis().temp_size_in_bytes
    table_f32 = 4 * config.vocab_size * config.hidden_size
    layers_f32 = 4 * sum(a.size for a in jax.tree.leaves(nnx.state(model.model.layers)))
    assert temp < min(table_f32, layers_f32) / 4, (temp, table_f32, layers_f32)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's lowering")
def test_bf16_weights_under_float32_matmuls_decode_on_a_float32_copy(decode_programs,
                                                                      monkeypatch):
    """What `upcast_weights_warning` tells CLI users: XLA:CPU has no mixed-dtype matmul, so a
    decode program over bf16 weights with fp32 matmuls on XLA's dots (MARCO_CPU_KERNELS=0) holds
    fp32 copies of the layer weights. If XLA ever fuses that convert into the dot, this fails and
    the warning should go. With the packed-weights kernel the program holds no such copy (the
    packed fp32 layers are kept between calls instead) and nothing is warned."""
    from flax import nnx

    from marco_jax.infer.generate import upcast_weights_warning

    config = get_preset("tiny", vocab_size=8192, param_dtype="bfloat16")
    model = init_model(config)
    prompts = np.tile(np.arange(3, 11), (2, 1))
    layers_f32 = 4 * sum(a.size for a in jax.tree.leaves(nnx.state(model.model.layers)))
    generate(model, prompts, 4, eos_ids=())
    assert decode_programs[0].memory_analysis().temp_size_in_bytes < 0.25 * layers_f32
    assert upcast_weights_warning(model, "--matmul-dtype") is None
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    generate(model, prompts, 4, eos_ids=())
    assert decode_programs[1].memory_analysis().temp_size_in_bytes >= 0.9 * layers_f32
    warning = upcast_weights_warning(model, "--matmul-dtype")
    assert warning.startswith("warning: bfloat16 weights with float32 matmuls on CPU")
    assert f"({layers_f32 / 1e6:,.1f} MB here)" in warning
    for quiet in (dict(param_dtype="bfloat16", matmul_dtype="bfloat16"), dict(),
                  dict(matmul_dtype="bfloat16")):
        assert upcast_weights_warning(init_model(get_preset("tiny", vocab_size=8192, **quiet)),
                                      "--matmul-dtype") is None
