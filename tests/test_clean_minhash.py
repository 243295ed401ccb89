"""MinHash signatures (xxhash-64 + vectorised affine permutations, datatrove's scheme) against
datasketch and hand-built cases, and the one word tokenization per document that the quality
filters and the MinHash band keys share."""

import json
import random

import numpy as np
import pytest
from datasketch import MinHash

from data_pipelines.eval_corpus import load_sentences
from data_pipelines.languages import MARCO_LANGUAGES
from data_pipelines.minhash import (
    MinHashConfig,
    band_keys,
    jaccard,
    shingles,
    signature,
    signature_of_words,
)
from data_pipelines.words import FastSpaCyTokenizer, stock_word_tokenizer, word_tokenizer

CFG = MinHashConfig()


def _estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_signature_estimates_jaccard_like_datasketch():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    ours_err, ds_err = [], []
    for _ in range(40):
        words = [rng.choice(vocab) for _ in range(200)]
        edited = list(words)
        for _ in range(rng.randint(1, 30)):
            edited[rng.randrange(len(edited))] = rng.choice(vocab)
        a, b = " ".join(words), " ".join(edited)
        true = jaccard(shingles(a, "en", 5), shingles(b, "en", 5))
        ours_err.append(abs(_estimate(signature(a, "en", CFG), signature(b, "en", CFG)) - true))
        ms = []
        for text in (a, b):
            m = MinHash(num_perm=CFG.num_perm, seed=1)
            m.update_batch([s.encode() for s in shingles(text, "en", 5)])
            ms.append(m)
        ds_err.append(abs(ms[0].jaccard(ms[1]) - true))
    # 112 permutations: standard error sqrt(J(1-J)/112) <= 0.047
    assert np.mean(ours_err) < 0.05 and np.mean(ours_err) < np.mean(ds_err) + 0.02


def test_hand_built_cases():
    words = "the quick brown fox jumps over the lazy dog again".split()
    sig = signature_of_words(words, CFG)
    assert sig.dtype == np.uint64 and sig.shape == (CFG.num_perm,)
    # case and punctuation-only tokens do not change the shingles
    noisy = [w.upper() if i % 2 else w for i, w in enumerate(words)]
    assert (signature_of_words(noisy[:3] + [",", "--"] + noisy[3:], CFG) == sig).all()
    assert (signature_of_words(list(reversed(words)), CFG) != sig).mean() > 0.9
    # fewer words than the n-gram: one shingle of all of them, still a real signature
    assert len(set(signature_of_words(["a", "b"], CFG))) > 1
    # no word at all: every document without words gets the same (empty) signature
    assert (signature_of_words([], CFG) == signature_of_words(["!!"], CFG)).all()
    # one changed word in 60 keeps most bands; an unrelated text shares none
    rng = random.Random(2)
    base = [f"t{rng.randrange(10_000)}" for _ in range(60)]
    near = base[:30] + ["changed"] + base[31:]
    far = [f"t{rng.randrange(10_000)}" for _ in range(60)]
    kb = set(band_keys(signature_of_words(base, CFG), "en", CFG))
    assert len(kb & set(band_keys(signature_of_words(near, CFG), "en", CFG))) >= 3
    assert not kb & set(band_keys(signature_of_words(far, CFG), "en", CFG))


def test_one_word_tokenization_per_document(monkeypatch):
    from data_pipelines.records import RawLine
    from data_pipelines.web import CleanDocFn, WebConfig

    calls = []
    real = FastSpaCyTokenizer.word_tokenize

    def counting(self, text):
        calls.append(text)
        return real(self, text)

    monkeypatch.setattr(FastSpaCyTokenizer, "word_tokenize", counting)
    fn = CleanDocFn(WebConfig(input="x", output="y", languages=("en",), pii=False,
                              token_counter="whitespace", ms_id_second_opinion=False))
    fn.setup()
    texts = [
        "The village council met on Tuesday evening to discuss the repairs to the old bridge.\n"
        "Several farmers said that the harvest had been late this year because of the rain, and "
        "they asked for more time to pay the new market fees.\nThe mayor promised to publish "
        "the budget before the end of the month, so that everyone could read it at the library.",
        "Our museum opens a small exhibition of railway posters next week.\nMost of them were "
        "printed between the two wars, when travel by train was still an adventure for many "
        "families.\nVisitors can also see a restored engine in the courtyard, and children get "
        "a free guide with drawings and questions about the history of the station.",
        "If you grow tomatoes in a garden with heavy soil, water them early in the morning.\n"
        "The roots need air as much as they need water, so a thin layer of straw helps to keep "
        "the ground loose.\nIn August, pick the fruit as soon as it turns red, because birds "
        "and insects find it quickly and the plants produce more when they are harvested often.",
    ]
    raws = [RawLine("f", i, json.dumps({"text": t}).encode()) for i, t in enumerate(texts)]
    out = list(fn.process(raws))
    assert len(out) == 3 and all(isinstance(d, dict) and d.get("minhash") for d in out), [
        getattr(d, "value", d) for d in out]
    assert sorted(calls) == sorted(texts)  # once each: filters and MinHash shared the words


def _check_fast_spacy_tokenizer(shared_data, monkeypatch, languages) -> int:
    """Same tokens as datatrove's SpaCyTokenizer (sentencizer + memory_zone) on real text of each
    language that uses spaCy, also across a vocabulary-cap rebuild; how many were checked."""
    import data_pipelines.words as words

    monkeypatch.setattr(words, "VOCAB_CAP", 300)
    checked = 0
    for lang in languages:
        ours, stock = word_tokenizer(lang), stock_word_tokenizer(lang)
        if not isinstance(ours, FastSpaCyTokenizer):
            continue
        sents = load_sentences(shared_data / "text", lang)[:120]
        docs = [" ".join(sents[i:i + 6]) + "\nIS_ALPHB" * (i == 0) for i in range(0, 120, 6)]
        want = [stock.word_tokenize(d) for d in docs]
        # "IS_ALPHA", a spaCy symbol name, as a word: datatrove's own tokens for it depend on
        # spaCy's process state (kept in a fresh process; after other memory_zones spaCy raises
        # on it and datatrove drops it: seen for ar when the 5-language test ran first). We keep
        # it; the reference is datatrove's tokens for a same-shape non-symbol word, renamed.
        docs[0] = docs[0].replace("IS_ALPHB", "IS_ALPHA")
        want[0] = [t.replace("ALPHB", "ALPHA") for t in want[0]]
        assert [ours.word_tokenize(d) for d in docs] == want, lang
        # rebuilt, not unbounded (a document adds at most a few hundred lexemes)
        assert len(ours.tokenizer.vocab) <= ours._base_vocab + 300 + 1000, lang
        checked += 1
    return checked


# ~20 s (spaCy pipelines): slow like the every-language test below, which covers these five.
@pytest.mark.slow
def test_fast_spacy_tokenizer_gives_datatrove_tokens(shared_data, monkeypatch):
    """Five scripts and morphologies (Latin with clitics, Cyrillic, Arabic, Greek, Indonesian);
    every spaCy language in the slow test below."""
    assert _check_fast_spacy_tokenizer(shared_data, monkeypatch,
                                       ["fr", "ru", "ar", "el", "id"]) == 5


@pytest.mark.slow
def test_fast_spacy_tokenizer_gives_datatrove_tokens_in_every_language(shared_data, monkeypatch):
    assert _check_fast_spacy_tokenizer(shared_data, monkeypatch, MARCO_LANGUAGES) >= 20


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_signature_words_come_from_the_language_tokenizer(lang):
    text = "我们今天去北京。我们明天去上海。" if lang == "zh" else "We went to Paris. We left."
    assert shingles(text, lang, 2) >= {" ".join(w.lower() for w in word_tokenizer(lang)
                                                 .word_tokenize(text)[:2])}
