"""Mixture rates: the paper's stage shares per group and the temperature formula per language,
realised by the sampler over >= 20k examples (sampler only, no tokenization)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marco_jax.data import languages as L
from marco_jax.data import mixtures as M
from marco_jax.data.sampler import MixtureSampler, document_index, permute_index

# The paper's stage table (MARCO_PAPER.md), written out independently of the module under test.
PAPER_STAGES = {
    "marco_stage1": {"english": 32, "chinese": 17, "high_resource": 30, "low_resource": 9,
                     "parallel": 6, "knowledge": 5, "synthetic": 1},
    "marco_stage2": {"english": 28, "chinese": 15, "high_resource": 26, "low_resource": 15,
                     "parallel": 8, "knowledge": 6, "synthetic": 2},
}
HIGH = ["ar", "de", "es", "fr", "ko", "ja", "pt", "tr"]
LOW = "bn he id it ms nl pl ru th uk ur vi cs el hu kk ro az ne".split()
N_EXAMPLES = 24_000


def test_languages_match_the_paper():
    assert len(L.LANGUAGES) == 29 and set(L.OTHER_HIGH_RESOURCE) == set(HIGH)
    assert set(L.LOW_RESOURCE) == set(LOW)
    assert L.POOL_TOKENS_B["en"] == 1459.7 and L.POOL_TOKENS_B["zh"] == 214.7
    assert min(L.POOL_TOKENS_B[x] for x in HIGH) == 41.8
    assert max(L.POOL_TOKENS_B[x] for x in HIGH) == 442.8
    assert L.POOL_TOKENS_B["ms"] == 2.9 == min(L.POOL_TOKENS_B[x] for x in LOW)
    assert L.POOL_TOKENS_B["el"] == 376.8 == max(L.POOL_TOKENS_B[x] for x in LOW)


def test_temperature_weights_hand_computed():
    pools = {"a": 100.0, "b": 25.0, "c": 1.0}
    assert M.temperature_weights(pools, 1.0) == pytest.approx(
        {"a": 100 / 126, "b": 25 / 126, "c": 1 / 126})
    # T = 2: square roots 10, 5, 1.
    assert M.temperature_weights(pools, 2.0) == pytest.approx({"a": 10 / 16, "b": 5 / 16,
                                                               "c": 1 / 16})
    assert M.temperature_weights(pools, math.inf) == pytest.approx({"a": 1 / 3, "b": 1 / 3,
                                                                    "c": 1 / 3})
    with pytest.raises(ValueError, match="temperature"):
        M.temperature_weights(pools, 0.0)
    with pytest.raises(ValueError, match="pool sizes"):
        M.temperature_weights({"a": 0.0}, 1.0)


def _expected_language_shares(stage: str, temperature: float) -> dict[str, float]:
    """Group share x n_i^(1/T) / sum n_j^(1/T), written independently of mixtures.py."""
    shares = {g: v / 100 for g, v in PAPER_STAGES[stage].items()}
    groups = {"english": {"web.en": L.POOL_TOKENS_B["en"]},
              "chinese": {"web.zh": L.POOL_TOKENS_B["zh"]},
              "high_resource": {f"web.{x}": L.POOL_TOKENS_B[x] for x in HIGH},
              "low_resource": {f"web.{x}": L.POOL_TOKENS_B[x] for x in LOW},
              "parallel": {f"bitext.en_{x}": 1.0 for x in L.LANGUAGES if x != "en"},
              "knowledge": {"knowledge": 1.0}, "synthetic": {"synthetic": 1.0}}
    out = {}
    for g, pools in groups.items():
        z = sum(n ** (1 / temperature) for n in pools.values())
        for t, n in pools.items():
            out[t] = shares[g] * n ** (1 / temperature) / z
    return out


def _pools(spec: M.MixtureSpec) -> dict[str, float]:
    return {t: M.paper_pool_tokens(t) for t in spec.tasks}


@pytest.mark.parametrize("stage", ["marco_stage1", "marco_stage2"])
@pytest.mark.parametrize("temperature", [1.0, 3.0, 100.0])
def test_stage_shares_realised_by_sampler(stage, temperature):
    spec = M.get_mixture(stage)
    rates = M.task_rates(spec, temperature, _pools(spec))
    expected = _expected_language_shares(stage, temperature)
    assert set(rates) == set(expected)
    for t in expected:
        assert rates[t] == pytest.approx(expected[t], rel=1e-9)

    names = list(rates)
    sampler = MixtureSampler([rates[t] for t in names], seed=17)
    counts = sampler.task_counts(0, N_EXAMPLES)
    realised = {t: c / N_EXAMPLES for t, c in zip(names, counts, strict=True)}
    for g, share in PAPER_STAGES[stage].items():
        got = sum(realised[t] for t in names if spec.group_of(t) == g)
        assert abs(got - share / 100) < 0.01, (g, got, share)
    for t in names:
        assert abs(realised[t] - expected[t]) < 0.01, (t, realised[t], expected[t])


def test_token_shares_with_unequal_document_lengths():
    """Rates are shares of tokens: long-document tasks get fewer examples."""
    spec = M.get_mixture("marco_stage2")
    rates = M.task_rates(spec, 3.0, _pools(spec))
    rng = np.random.default_rng(0)
    mean_tokens = {t: float(rng.uniform(20, 2000)) for t in rates}
    probs = M.example_probabilities(rates, mean_tokens)
    names = list(rates)
    counts = MixtureSampler([probs[t] for t in names], seed=3).task_counts(0, N_EXAMPLES)
    tokens = {t: c * mean_tokens[t] for t, c in zip(names, counts, strict=True)}
    total = sum(tokens.values())
    for g, share in PAPER_STAGES["marco_stage2"].items():
        got = sum(tokens[t] for t in names if spec.group_of(t) == g) / total
        assert abs(got - share / 100) < 0.01, (g, got)


def test_sampler_is_a_pure_function_of_seed_and_index():
    probs = [0.5, 0.3, 0.15, 0.05]
    a, b = MixtureSampler(probs, seed=5, block_size=64), MixtureSampler(probs, seed=5,
                                                                         block_size=64)
    forward = [a.lookup(j) for j in range(3000)]
    backward = [b.lookup(j) for j in reversed(range(3000))][::-1]
    assert forward == backward
    assert forward != [MixtureSampler(probs, seed=6, block_size=64).lookup(j)
                       for j in range(3000)]
    # Task-local indices enumerate 0, 1, 2, ... per task: nothing skipped or repeated.
    for t in range(len(probs)):
        local = [k for task, k in forward if task == t]
        assert local == list(range(len(local)))


def test_document_order_is_a_permutation_per_epoch():
    for n in (1, 2, 7, 100, 1001):
        assert sorted(permute_index(i, n, key=9) for i in range(n)) == list(range(n))
    epoch0 = [document_index(1, "web.de", k, 50) for k in range(50)]
    epoch1 = [document_index(1, "web.de", k, 50) for k in range(50, 100)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(50)) and epoch0 != epoch1


def test_mixture_is_a_config_edit():
    shares = dict.fromkeys(M.GROUPS, 0.0) | {"english": 0.5, "low_resource": 0.5}
    spec = M.get_mixture("marco_stage1", shares)
    rates = M.task_rates(spec, 1.0, _pools(spec))
    assert sum(r for t, r in rates.items() if t == "web.en") == pytest.approx(0.5)
    assert set(rates) == {"web.en"} | {f"web.{x}" for x in LOW}
    with pytest.raises(ValueError, match="sum to"):
        M.get_mixture("marco_stage1", {"english": 0.9})
    with pytest.raises(ValueError, match="unknown mixture"):
        M.get_mixture("nope")
