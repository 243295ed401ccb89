"""SFT objective: loss on assistant tokens only (token mean over the batch), packed == unpacked in
loss and gradients, equal to transformers' cross-entropy on the assistant mask, per language."""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights
from posttrain_fixtures import tiny_train

from marco_jax.data.chat_records import language_index, pack_sft_rows, read_chat_examples
from marco_jax.data.row_packing import pad_rows
from marco_jax.train.sft import SFTObjective

VOCAB = 512
SAMPLE_SFT = Path(str(importlib.resources.files("marco_jax") / "sample_data" / "sft"))
LANGUAGES = ("en", "zh", "de", "ja", "ru", "ar", "ko")
OBJECTIVE = SFTObjective(LANGUAGES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    _, hf_model = make_hf_model(tmp_path_factory.mktemp("sft"), vocab=VOCAB, layers=2)
    return hf_model, load_hf_weights(hf_model)


@pytest.fixture(scope="module")
def encoded():
    """Real shipped conversations (ids folded into the tiny vocabulary, masks unchanged)."""
    examples, _ = read_chat_examples(str(SAMPLE_SFT / "sharegpt.jsonl"))
    examples = [e for e in examples if len(e[1]) <= 60][:8]
    assert len(examples) == 8
    return [(ids % VOCAB, mask, language_index(e.language, LANGUAGES))
            for e, ids, mask in examples]


@functools.cache
def _value_and_grad(graphdef, objective):
    def mean_loss(p, batch):
        loss_sum, sums = objective.loss(nnx.merge(graphdef, p), batch)
        return loss_sum / sums["weight"], sums
    return jax.jit(jax.value_and_grad(mean_loss, has_aux=True))


def loss_and_grads(model, objective, rows):
    graphdef, params = nnx.split(model)
    batch = {k: jnp.asarray(rows[k]) for k in objective.batch_keys}
    (loss, sums), grads = _value_and_grad(graphdef, objective)(params, batch)
    sums = {**jax.tree.map(np.asarray, sums), "loss_sum": np.asarray(loss * sums["weight"])}
    return float(loss), sums, grads


def test_packed_equals_unpacked_loss_and_gradients(models, encoded):
    _, model = models
    objective = OBJECTIVE
    packed = pack_sft_rows(encoded, seq_len=128)
    unpacked = pack_sft_rows(encoded, seq_len=64, max_per_row=1)
    assert len(unpacked["tokens"]) == len(encoded) and (unpacked["segment_ids"] <= 1).all()
    assert len(packed["tokens"]) < len(encoded) and packed["segment_ids"].max() >= 2
    loss_p, sums_p, grads_p = loss_and_grads(model, objective, pad_rows(packed, 4))
    loss_u, sums_u, grads_u = loss_and_grads(model, objective, pad_rows(unpacked, 2))
    assert sums_p["weight"] == sums_u["weight"] == sum(m.sum() for _, m, _ in encoded)
    assert sums_p["sequences"] == sums_u["sequences"] == len(encoded)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums_p["language_loss_sum"], sums_u["language_loss_sum"],
                               rtol=1e-5, atol=1e-5)
    for gp, gu in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u), strict=True):
        np.testing.assert_allclose(gp, gu, rtol=1e-5, atol=1e-5)


def test_loss_equals_transformers_cross_entropy_on_assistant_mask(models, encoded):
    hf_model, model = models
    objective = SFTObjective(LANGUAGES, loss_chunk=16)
    rows = pad_rows(pack_sft_rows(encoded, seq_len=128), 4)
    loss, sums, _ = loss_and_grads(model, objective, rows)
    nll_sum, count = 0.0, 0
    per_language: dict[int, list[float]] = {}
    with torch.no_grad():
        for ids, mask, lang in encoded:
            logits = hf_model(torch.tensor(ids[None], dtype=torch.long)).logits[0, :-1]
            labels = torch.tensor(ids[1:], dtype=torch.long).masked_fill(
                torch.tensor(mask == 0), -100)
            total = F.cross_entropy(logits.double(), labels, ignore_index=-100, reduction="sum")
            nll_sum += float(total)
            count += int(mask.sum())
            per_language.setdefault(lang, [0.0, 0])
            per_language[lang][0] += float(total)
            per_language[lang][1] += int(mask.sum())
    assert abs(loss - nll_sum / count) < 1e-4
    metrics = objective.metrics(sums, prefix="eval_")
    assert abs(metrics["eval_loss"] - nll_sum / count) < 1e-4
    assert metrics["eval_target_tokens"] == count
    for lang, (total, n) in per_language.items():
        if lang >= 0:
            assert abs(metrics[f"eval_loss/{LANGUAGES[lang]}"] - total / n) < 1e-4
            assert metrics[f"eval_target_tokens/{LANGUAGES[lang]}"] == n
    # languages not in the list (-1) count in the total only
    listed = sum(n for lang, (_, n) in per_language.items() if lang >= 0)
    assert np.asarray(sums["language_tokens"]).sum() == listed < count


def test_prompt_tokens_carry_no_gradient(models, encoded):
    """Changing a user turn's *targets* changes nothing (they are masked); changing an assistant
    target changes the loss."""
    _, model = models
    objective = OBJECTIVE
    rows = pad_rows(pack_sft_rows(encoded[:2], seq_len=128), 4)
    base, _, _ = loss_and_grads(model, objective, rows)
    masked_slot = np.argwhere((rows["loss_mask"] == 0) & (rows["segment_ids"] > 0))[0]
    loss_slot = np.argwhere(rows["loss_mask"] == 1)[0]
    for slot, changes in ((masked_slot, False), (loss_slot, True)):
        edited = {k: v.copy() for k, v in rows.items()}
        edited["targets"][tuple(slot)] = (edited["targets"][tuple(slot)] + 1) % VOCAB
        loss, _, _ = loss_and_grads(model, objective, edited)
        assert (loss != base) == changes


@pytest.mark.slow
def test_tiny_run_memorises_the_assistant_tokens(encoded):
    rows = pad_rows(pack_sft_rows(encoded[:4], seq_len=128), 2)
    history, _ = tiny_train(OBJECTIVE, {k: jnp.asarray(rows[k]) for k in OBJECTIVE.batch_keys},
                            steps=90, lr=1e-2, vocab=VOCAB)
    assert history[0]["loss"] > 5.0 and history[-1]["loss"] < 0.05
    assert all(v < 0.1 for k, v in history[-1].items() if k.startswith("loss/"))
