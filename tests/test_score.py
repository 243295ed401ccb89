"""Continuation scoring against log-softmax of transformers' logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from parity_fixtures import load_hf_weights

from marco_jax.infer import score_requests

VOCAB = 160


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    _, hf_model = make_hf_model(tmp_path_factory.mktemp("score"), hidden=40, heads=4, kv_heads=2,
                                layers=2, tie=False, vocab=VOCAB, seed=7)
    return hf_model, load_hf_weights(hf_model)


def hf_continuation_logprobs(hf_model, context, continuation):
    full = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf_model(full).logits[0, :-1], dim=-1).numpy()
    targets = full[0, 1:].numpy()
    per_token = logprobs[np.arange(len(targets)), targets][-len(continuation):]
    greedy = (logprobs.argmax(-1) == targets)[-len(continuation):].all()
    return per_token, bool(greedy)


def test_scores_match_transformers(pair):
    hf_model, model = pair
    rng = np.random.default_rng(0)
    requests = [(rng.integers(0, VOCAB, n).tolist(), rng.integers(0, VOCAB, m).tolist())
                for n, m in ((5, 3), (40, 1), (17, 9), (1, 12), (30, 30))]
    # A greedy continuation, so is_greedy is exercised on a True case.
    context = requests[0][0]
    greedy_cont = []
    for _ in range(4):
        with torch.no_grad():
            logits = hf_model(torch.tensor([context + greedy_cont])).logits[0, -1]
        greedy_cont.append(int(logits.argmax()))
    requests.append((context, greedy_cont))

    results = score_requests(model, requests, batch_size=4, pad_multiple=16)
    assert len(results) == len(requests)
    for (context, continuation), result in zip(requests, results, strict=True):
        per_token, greedy = hf_continuation_logprobs(hf_model, context, continuation)
        np.testing.assert_allclose(result.token_logprobs, per_token, atol=1e-4)
        np.testing.assert_allclose(result.logprob, per_token.sum(), atol=1e-4)
        assert result.is_greedy == greedy
    assert results[-1].is_greedy and not results[2].is_greedy


def test_long_inputs_lose_context_from_the_left(pair):
    hf_model, model = pair
    rng = np.random.default_rng(1)
    context, continuation = rng.integers(0, VOCAB, 50).tolist(), rng.integers(0, VOCAB, 6).tolist()
    [result] = score_requests(model, [(context, continuation)], batch_size=1, max_len=20,
                              pad_multiple=8)
    # The model sees the last 20 input tokens: context[-15:] + continuation[:-1].
    per_token, _ = hf_continuation_logprobs(hf_model, context[-15:], continuation)
    np.testing.assert_allclose(result.token_logprobs, per_token, atol=1e-4)


def test_bad_requests_are_named(pair):
    _, model = pair
    with pytest.raises(ValueError, match="request 1: empty continuation"):
        score_requests(model, [([1, 2], [3]), ([1], [])])
    with pytest.raises(ValueError, match="request 0: empty context"):
        score_requests(model, [([], [3])])
    with pytest.raises(ValueError, match="does not fit max_len=4"):
        score_requests(model, [([1], [2, 3, 4, 5, 6])], max_len=4)
    [result] = score_requests(model, [([], [3, 4])], empty_context_id=1, batch_size=1)
    assert result.token_logprobs.shape == (2,)
