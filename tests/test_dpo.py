"""DPO: pair layouts and packing; loss, rewards, margins and accuracy equal TRL 1.16's own
`DPOTrainer._compute_loss` on the same per-token log-probs, for each loss type; per-sequence
log-probs equal transformers'; packed == unpacked in loss and gradients."""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights
from posttrain_fixtures import tiny_config, tiny_train

from marco_jax.data.chat_records import BadRecord
from marco_jax.data.preference import (
    EncodedPair,
    PreferencePair,
    encode_answer,
    pack_pair_rows,
    parse_pair_record,
    read_preference_pairs,
)
from marco_jax.data.row_packing import PackedSequence
from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.model.qwen2 import init_model
from marco_jax.train.dpo import DPOConfig, DPOObjective

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

VOCAB = 512
SAMPLE_DPO = Path(str(importlib.resources.files("marco_jax") / "sample_data" / "dpo"))
LANGUAGES = ("en", "de", "fr", "zh", "ja", "ko", "ru", "it", "pt")


# -- data -------------------------------------------------------------------------------------
def test_layouts_agree_and_only_the_answer_counts():
    tok = get_tokenizer()
    strings = {"system": "Be brief.", "prompt": "Capital of France?", "chosen": "Paris.",
               "rejected": "Rome.", "language": "en"}
    head = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"}]
    lists = {"chosen": head + [{"role": "assistant", "content": "Paris."}],
             "rejected": head + [{"role": "assistant", "content": "Rome."}],
             "prompt": "Capital of France?", "language": "en"}  # UltraFeedback keeps a string
    trl_style = {"prompt": head, "chosen": [{"role": "assistant", "content": "Paris."}],
                 "rejected": [{"role": "assistant", "content": "Rome."}], "language": "en"}
    pairs = [parse_pair_record(r) for r in (strings, lists, trl_style)]
    assert pairs[0] == pairs[1] == pairs[2]
    seq = encode_answer(pairs[0], "Paris.")
    answer = [t for t, m in zip(seq.ids[1:], seq.target_mask, strict=True) if m]
    assert tok.decode(answer) == "Paris.<|im_end|>"
    # a multi-turn prompt: earlier assistant turns are prompt, not answer
    multi = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                        {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}],
             "rejected": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Yo"},
                          {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "5"}]}
    pair = parse_pair_record(multi)
    seq = encode_answer(pair, pair.chosen)
    assert tok.decode([t for t, m in zip(seq.ids[1:], seq.target_mask, strict=True) if m]) == \
        "4<|im_end|>"


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "a", "chosen": "b"}, "missing_field"),
    ({"chosen": "b", "rejected": "c"}, "missing_field"),
    ({"prompt": "a", "chosen": "", "rejected": "c"}, "empty_content"),
    ({"prompt": "a", "chosen": 3, "rejected": "c"}, "wrong_type"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "X"}, {"role": "assistant", "content": "c"}]},
     "prompt_mismatch"),
    ({"chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "user", "content": "a"}]}, "no_assistant_turn"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]},
     "bad_role"),
])
def test_bad_pairs(tmp_path, record, reason):
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away", "language": "en"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, record)) + "\n")
    with pytest.raises(BadRecord, match=r"pairs\.jsonl: record 1 \(line 2\): ") as err:
        read_preference_pairs(str(path))
    assert err.value.reason == reason
    pairs, counters = read_preference_pairs(str(path), on_bad_record="skip")
    assert len(pairs) == 1 and dict(counters.skipped) == {reason: 1}


def test_truncation_keep_start():
    pair = PreferencePair((("user", "Tell me a long story"),), "word " * 80, "no", "en", "field")
    full = encode_answer(pair, pair.chosen)
    with pytest.raises(BadRecord, match="tokens > max_length 32") as err:
        encode_answer(pair, pair.chosen, max_length=32)
    assert err.value.reason == "too_long"
    cut = encode_answer(pair, pair.chosen, max_length=32, truncation="keep_start")
    assert cut.ids.tolist() == full.ids[:32].tolist()
    assert cut.target_mask.tolist() == full.target_mask[:31].tolist()
    with pytest.raises(BadRecord, match="prompt alone fills it"):
        encode_answer(pair, pair.chosen, max_length=8, truncation="keep_start")


def test_sample_pairs_and_packing():
    for name in ("pairs", "messages"):
        pairs, counters = read_preference_pairs(str(SAMPLE_DPO / f"{name}.jsonl"))
        assert len(pairs) >= 12 and not counters.skipped and len(counters.languages) >= 10
    rows = pack_pair_rows(pairs, seq_len=256, pairs_per_row=3, languages=LANGUAGES)
    placed = rows["pair_ids"][rows["pair_ids"] >= 0]
    assert sorted(placed.tolist()) == list(range(len(pairs)))
    for r, k in zip(*np.nonzero(rows["pair_ids"] >= 0), strict=True):
        pair = pairs[rows["pair_ids"][r, k]]
        for key, seq in (("chosen_segment", pair.chosen), ("rejected_segment", pair.rejected)):
            at = rows["segment_ids"][r] == rows[key][r, k]
            assert rows["tokens"][r][at].tolist() == seq.ids[:-1].tolist()
            assert rows["loss_mask"][r][at].tolist() == seq.target_mask.tolist()


# -- model-based ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    _, hf_policy = make_hf_model(root, vocab=VOCAB, seed=0, name="policy")
    _, hf_reference = make_hf_model(root, vocab=VOCAB, seed=1, name="reference")
    return hf_policy, load_hf_weights(hf_policy), load_hf_weights(hf_reference)


def fold(seq: PackedSequence) -> PackedSequence:
    return PackedSequence(seq.ids % VOCAB, seq.target_mask)


@pytest.fixture(scope="module")
def pairs():
    """Shipped pairs (ids folded into the tiny vocabulary), 8 of them, both layouts."""
    out = []
    for name in ("pairs", "messages"):
        encoded, _ = read_preference_pairs(str(SAMPLE_DPO / f"{name}.jsonl"))
        out += [p for p in encoded if p.slots <= 100][:4]
    return [EncodedPair(fold(p.chosen), fold(p.rejected), p.language, i)
            for i, p in enumerate(out)]


def batch_of(rows, objective):
    return {k: jnp.asarray(rows[k]) for k in objective.batch_keys}


@functools.cache
def _jitted(graphdef, objective, with_grad: bool):
    def mean_loss(params, batch, reference):
        ref = None if reference is None else nnx.merge(graphdef, reference)
        loss_sum, sums = objective.loss(nnx.merge(graphdef, params), batch, ref)
        return loss_sum / sums["weight"], {**sums, "loss_sum": loss_sum}
    fn = jax.value_and_grad(mean_loss, has_aux=True) if with_grad else mean_loss
    return jax.jit(fn)


def run(model, objective, rows, reference=None, with_grad=False):
    graphdef, params = nnx.split(model)
    ref = None if reference is None else nnx.split(reference)[1]
    out = _jitted(graphdef, objective, with_grad)(params, batch_of(rows, objective), ref)
    if with_grad:
        (loss, sums), grads = out
        return float(loss), jax.tree.map(np.asarray, sums), grads
    loss, sums = out
    return float(loss), jax.tree.map(np.asarray, sums)


def per_sequence_reference(hf_model, seq: PackedSequence) -> float:
    with torch.no_grad():
        logits = hf_model(torch.tensor(seq.ids[None], dtype=torch.long)).logits[0, :-1].double()
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq.ids[1:, None]).long())[:, 0]
    return float((logp * torch.tensor(seq.target_mask, dtype=torch.float64)).sum())


def test_sequence_logps_equal_transformers(models, pairs):
    hf_policy, policy, _ = models
    objective = DPOObjective(DPOConfig(reference="none"), pairs_per_row=4, loss_chunk=32)
    rows = pack_pair_rows(pairs, seq_len=256, pairs_per_row=4)
    got = jax.jit(objective.sequence_logps)(policy, batch_of(rows, objective))
    for r, k in zip(*np.nonzero(rows["pair_ids"] >= 0), strict=True):
        pair = pairs[rows["pair_ids"][r, k]]
        assert abs(float(got["chosen"][r, k]) - per_sequence_reference(hf_policy, pair.chosen)) \
            < 1e-4
        assert abs(float(got["rejected"][r, k])
                   - per_sequence_reference(hf_policy, pair.rejected)) < 1e-4
        assert got["chosen_tokens"][r, k] == pair.chosen.target_mask.sum()


def trl_compute_loss(token_logps: list[np.ndarray], ref_chosen, ref_rejected, loss_type: str,
                     beta: float, label_smoothing: float = 0.0):
    """TRL's own DPOTrainer._compute_loss on a minimal `self`, with a stand-in model that
    returns the given per-token log-probs (chosen sequences first, then rejected, as TRL's
    collator stacks them). Returns (loss, logged metrics)."""
    n2, width = len(token_logps), max(len(t) for t in token_logps) + 1
    log_probs = torch.zeros(n2, width - 1, dtype=torch.float64)
    completion_mask = torch.zeros(n2, width, dtype=torch.long)
    for i, t in enumerate(token_logps):
        log_probs[i, :len(t)] = torch.tensor(t, dtype=torch.float64)
        completion_mask[i, 1:len(t) + 1] = 1
    outputs = SimpleNamespace(log_probs=log_probs, entropy=torch.zeros(n2, width - 1),
                              mean_logits=torch.zeros(n2, width - 1),
                              is_top1=torch.zeros(n2, width - 1, dtype=torch.bool))
    identity = lambda x: x  # noqa: E731
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(n2, width, dtype=torch.long),
              "attention_mask": torch.ones(n2, width, dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": torch.tensor(ref_chosen, dtype=torch.float64),
              "ref_rejected_logps": torch.tensor(ref_rejected, dtype=torch.float64)}
    loss = trl_dpo.DPOTrainer._compute_loss(fake_self, lambda **kw: outputs, inputs, False)
    return float(loss), {k: v[0] for k, v in fake_self._metrics["train"].items()}


@pytest.fixture(scope="module")
def trl_case(models, pairs):
    """Packed rows with reference log-probs from a second model (so some pairs are ranked right
    and some wrong), and, per sequence, what TRL's model would return: a per-token array over the
    answer whose sum is exactly our sequence log-prob (all of it on the first token; the length
    is the answer's, which IPO and the SFT term read)."""
    _, policy, reference = models
    rows = pack_pair_rows(pairs, seq_len=256, pairs_per_row=4, languages=LANGUAGES)
    probe = DPOObjective(DPOConfig(reference="none"), pairs_per_row=4)
    ours = jax.jit(probe.sequence_logps)(policy, batch_of(rows, probe))
    ref = jax.jit(probe.sequence_logps)(reference, batch_of(rows, probe))
    chosen, rejected, ref_c, ref_r, langs = [], [], [], [], []
    for r, k in zip(*np.nonzero(rows["pair_ids"] >= 0), strict=True):
        for key, out in (("chosen", chosen), ("rejected", rejected)):
            tokens = np.zeros(int(ours[f"{key}_tokens"][r, k]))
            tokens[0] = ours[key][r, k]
            out.append(tokens)
        rows["ref_chosen_logps"][r, k] = ref["chosen"][r, k]
        rows["ref_rejected_logps"][r, k] = ref["rejected"][r, k]
        ref_c.append(float(rows["ref_chosen_logps"][r, k]))
        ref_r.append(float(rows["ref_rejected_logps"][r, k]))
        langs.append(rows["pair_language_ids"][r, k])
    return rows, chosen, rejected, np.asarray(ref_c), np.asarray(ref_r), np.asarray(langs)


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("loss, eps, beta", [("sigmoid", 0.0, 0.1), ("sigmoid", 0.0, 0.5),
                                             ("robust", 0.1, 0.1), ("hinge", 0.0, 0.1),
                                             ("ipo", 0.0, 0.1), ("ipo", 0.0, 1.0)])
def test_loss_and_metrics_equal_trl(models, trl_case, loss, eps, beta):
    _, policy, _ = models
    rows, chosen, rejected, ref_c, ref_r, _ = trl_case
    objective = DPOObjective(DPOConfig(beta=beta, loss=loss, label_smoothing=eps),
                             pairs_per_row=4, languages=LANGUAGES)
    ours, sums = run(policy, objective, rows)
    metrics = objective.metrics(sums)
    expected, trl_metrics = trl_compute_loss(chosen + rejected, ref_c, ref_r, loss, beta, eps)
    assert 0 < metrics["rewards/accuracies"] < 1  # a case where both orders occur
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6, atol=1e-6)
    for name in METRICS:
        np.testing.assert_allclose(metrics[name], trl_metrics[name], rtol=1e-6, atol=1e-6,
                                   err_msg=name)


def test_conservative_dpo_label_smoothing_equals_trl_terms(models, trl_case):
    """cDPO = (1 - eps) * DPO(chosen > rejected) + eps * DPO(rejected > chosen): both terms
    from TRL's sigmoid loss (TRL 1.16 dropped the eps of its sigmoid loss)."""
    _, policy, _ = models
    rows, chosen, rejected, ref_c, ref_r, _ = trl_case
    eps = 0.2
    objective = DPOObjective(DPOConfig(label_smoothing=eps), pairs_per_row=4)
    ours, _ = run(policy, objective, rows)
    right, _ = trl_compute_loss(chosen + rejected, ref_c, ref_r, "sigmoid", 0.1)
    flipped, _ = trl_compute_loss(rejected + chosen, ref_r, ref_c, "sigmoid", 0.1)
    np.testing.assert_allclose(ours, (1 - eps) * right + eps * flipped, rtol=1e-6, atol=1e-6)


def test_reference_free_sft_term_and_per_language(models, trl_case):
    _, policy, _ = models
    rows, chosen, rejected, _, _, langs = trl_case
    zeros = np.zeros(len(chosen))
    objective = DPOObjective(DPOConfig(reference="none"), pairs_per_row=4, languages=LANGUAGES)
    ours, sums = run(policy, objective, rows)
    expected, trl_metrics = trl_compute_loss(chosen + rejected, zeros, zeros, "sigmoid", 0.1)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    # SFT term: weight x mean over pairs of the chosen answer's mean token NLL
    w = 0.5
    with_sft = DPOObjective(DPOConfig(reference="none", sft_weight=w), pairs_per_row=4)
    ours_sft, _ = run(policy, with_sft, rows)
    nll = np.mean([-c.sum() / len(c) for c in chosen])
    np.testing.assert_allclose(ours_sft, expected + w * nll, rtol=1e-6, atol=1e-6)
    # per language: the same figures over each language's pairs
    metrics = objective.metrics(sums, prefix="eval_")
    for i, lang in enumerate(LANGUAGES):
        sel = np.nonzero(langs == i)[0]
        if not len(sel):
            assert f"eval_rewards/accuracies/{lang}" not in metrics
            continue
        c = np.array([chosen[j].sum() for j in sel])
        r = np.array([rejected[j].sum() for j in sel])
        assert metrics[f"eval_pairs/{lang}"] == len(sel)
        np.testing.assert_allclose(metrics[f"eval_rewards/margins/{lang}"],
                                   np.mean(0.1 * (c - r)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics[f"eval_rewards/accuracies/{lang}"], np.mean(c > r))


def test_packed_equals_unpacked_loss_and_gradients(models, pairs):
    _, policy, reference = models
    config = DPOConfig(beta=0.1, reference="model", sft_weight=0.3)
    packed_obj = DPOObjective(config, pairs_per_row=4, languages=LANGUAGES)
    unpacked_obj = DPOObjective(config, pairs_per_row=1, languages=LANGUAGES)
    packed = pack_pair_rows(pairs, seq_len=256, pairs_per_row=4, languages=LANGUAGES)
    unpacked = pack_pair_rows(pairs, seq_len=256, pairs_per_row=1, languages=LANGUAGES)
    assert len(unpacked["tokens"]) == len(pairs) > len(packed["tokens"])
    assert packed_obj.needs_reference
    loss_p, sums_p, grads_p = run(policy, packed_obj, packed, reference, with_grad=True)
    loss_u, sums_u, grads_u = run(policy, unpacked_obj, unpacked, reference, with_grad=True)
    assert sums_p["weight"] == sums_u["weight"] == len(pairs)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5, atol=1e-5)
    for key in ("margins_sum", "correct_sum", "margins_by_language"):
        np.testing.assert_allclose(sums_p[key], sums_u[key], rtol=1e-5, atol=1e-5)
    for gp, gu in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u), strict=True):
        np.testing.assert_allclose(gp, gu, rtol=1e-5, atol=1e-5)


def test_config_validation():
    for bad, match in (({"loss": "kto"}, "dpo.loss='kto'"), ({"beta": 0.0}, "dpo.beta"),
                       ({"label_smoothing": 0.5}, "label_smoothing"),
                       ({"loss": "ipo", "label_smoothing": 0.1}, "sigmoid/robust"),
                       ({"reference": "frozen"}, "dpo.reference='frozen'")):
        with pytest.raises(ValueError, match=match):
            DPOConfig(**bad)


@pytest.mark.slow
def test_tiny_run_reaches_full_accuracy_with_growing_margins(pairs):
    objective = DPOObjective(DPOConfig(beta=0.1, reference="model"), pairs_per_row=4)
    rows = pack_pair_rows(pairs, seq_len=256, pairs_per_row=4)
    # the reference is the policy's starting point (tiny_train's seed-0 init)
    history, _ = tiny_train(objective, batch_of(rows, objective), steps=30, lr=3e-3,
                            vocab=VOCAB, reference=init_model(tiny_config(VOCAB), 0))
    assert abs(history[0]["rewards/margins"]) < 1e-4 and history[0]["rewards/accuracies"] < 1
    assert history[-1]["rewards/accuracies"] == 1.0
    margins = [h["rewards/margins"] for h in history]
    assert margins[-1] > 3.0 and margins[-1] > margins[len(margins) // 2] > margins[1]
    assert history[-1]["loss"] < 0.1 < history[0]["loss"]
