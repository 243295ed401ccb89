"""The pipelines' marco_jax model users — the perplexity scorer (web) and the sentence encoder
(bitext margin) — on a real converted checkpoint, against transformers on the same token ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from parity_fixtures import sharpen

from data_pipelines.encoders import MarcoJaxEncoder, make_encoder
from data_pipelines.perplexity import MarcoJaxScorer, make_scorer
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax
from marco_jax.data.tokenizer import get_tokenizer

VOCAB_ROWS = 151936  # Qwen2's embedding table: every id our tokenizer emits has a row

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Marco-LLM wurde auf vielen Sprachen trainiert, darunter Deutsch und Arabisch.",
    "我们在多种语言上继续预训练。",
    "ok",
    "Une phrase un peu plus longue pour que les lignes du lot n'aient pas toutes la même "
    "longueur, et qu'une partie du lot soit du remplissage.",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("marco_models")
    hf_dir, hf_model = make_hf_model(tmp, hidden=32, heads=4, kv_heads=2, layers=2, tie=True,
                                     vocab=VOCAB_ROWS, seed=11)
    hf_model = sharpen(hf_model)
    with torch.no_grad():  # peaked next-token distributions: perplexity then depends on the text
        hf_model.model.embed_tokens.weight.mul_(5.0)
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    convert_hf_to_orbax(hf_dir, tmp / "ours")
    return str(tmp / "ours"), hf_model


def hf_perplexity(hf_model, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:], each given the ids before it."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0, :-1].double()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).mean()
    return math.exp(float(nll))


def hf_sentence_embedding(hf_model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = hf_model(torch.tensor([ids]), output_hidden_states=True)
    # transformers' last hidden state is after the final norm, as is our model.hidden()
    last = out.hidden_states[-1][0].double().numpy()
    mean = last.mean(0)
    return mean / np.linalg.norm(mean)


def test_perplexity_matches_transformers(checkpoint):
    path, hf_model = checkpoint
    tok = get_tokenizer()
    scorer = make_scorer(f"marco_jax:{path}")
    ours = [scorer.perplexity(t, "xx") for t in TEXTS]
    ref = [hf_perplexity(hf_model, [tok.eos_id, *tok.encode(t)]) for t in TEXTS]
    np.testing.assert_allclose(ours, ref, rtol=2e-4)
    assert max(ref) / min(ref) > 3  # far from uniform: the comparison is not vacuous

    short = MarcoJaxScorer(model=scorer.lazy.model, max_tokens=6, pad_multiple=8)
    long_text = TEXTS[-1]
    np.testing.assert_allclose(short.perplexity(long_text, "fr"), hf_perplexity(
        hf_model, [tok.eos_id, *tok.encode(long_text)[:6]]), rtol=2e-4)
    with pytest.raises(ValueError, match="no tokens"):
        scorer.perplexity("", "en")


def test_encoder_matches_mean_pooled_transformers_hidden_states(checkpoint):
    path, hf_model = checkpoint
    tok = get_tokenizer()
    texts = [*TEXTS, ""]  # an empty sentence is encoded as the end-of-text token
    # batch_size 4: two batches, each right-padded to its longest sentence
    encoder = MarcoJaxEncoder(path, batch_size=4)
    ours = encoder.encode(texts)
    ref = np.stack([hf_sentence_embedding(hf_model, tok.encode(t) or [tok.eos_id])
                    for t in texts])
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    cos = ref @ ref.T
    assert cos[~np.eye(len(texts), dtype=bool)].max() < 0.99  # sentences get distinct vectors

    truncated = MarcoJaxEncoder(model=encoder.lazy.model, max_tokens=5).encode([TEXTS[1]])
    np.testing.assert_allclose(truncated[0], hf_sentence_embedding(
        hf_model, tok.encode(TEXTS[1])[:5]), atol=2e-5)
    from_spec = make_encoder(f"marco_jax:{path}")
    assert isinstance(from_spec, MarcoJaxEncoder) and from_spec.lazy.checkpoint == path


def test_web_pipeline_perplexity_filter(checkpoint, tmp_path, shared_data):
    """--perplexity_model marco_jax:... in a real run: each document's perplexity, recomputed
    with transformers, decides kept (<= max) or rejected at the perplexity step (> max)."""
    import json
    import random

    from data_pipelines import clean_web
    from data_pipelines.eval_corpus import load_sentences, make_document
    from data_pipelines.runs import read_jsonl_shards

    path, hf_model = checkpoint
    tok = get_tokenizer()
    rng = random.Random(0)
    en = load_sentences(shared_data / "text", "en")
    recs = [{"id": f"en{i}", "text": make_document(en[i * 4:(i + 1) * 4], "en", rng)}
            for i in range(6)]
    ppl = {r["id"]: hf_perplexity(hf_model, [tok.eos_id, *tok.encode(r["text"])]) for r in recs}
    limit = float(np.median(list(ppl.values())))
    raw = tmp_path / "in.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    out = tmp_path / "o"
    report = clean_web.main(["--input", str(raw), "--output", str(out), "--languages", "en",
                             "--quality_filters", "", "--token_counter", "whitespace",
                             "--no_near_dedup", "--format", "jsonl",
                             "--perplexity_model", f"marco_jax:{path}",
                             "--max_perplexity", f"en={limit}"])
    kept = read_jsonl_shards(str(out / "en" / "part-*.jsonl"))
    rejected = read_jsonl_shards(str(out / "rejected" / "part-*.jsonl"))
    assert report["inputs"] == len(kept) + len(rejected) == len(recs)
    assert kept and rejected
    for d in kept:
        assert hf_perplexity(hf_model, [tok.eos_id, *tok.encode(d["text"])]) <= limit * 1.0001
    for d in rejected:
        assert (d["step"], d["reason"]) == ("perplexity", "above_max")
        ref = hf_perplexity(hf_model, [tok.eos_id, *tok.encode(d["text"])])
        assert ref > limit * 0.9999
        assert d["perplexity"] == pytest.approx(ref, rel=2e-4)
    assert report["reasons"]["perplexity"] == {"above_max": len(rejected)}
