"""Benchmark metrics: multiple-choice accuracy, SQuAD F1/EM, sacrebleu BLEU/chrF++/spBLEU, MGSM
numbers. Every function is pure (strings and floats in, floats out) so it is tested on its own."""

from __future__ import annotations

import collections
import functools
import re
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import sentencepiece

# --- multiple choice -------------------------------------------------------------------------


def choice_predictions(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax of the summed log-likelihoods, argmax after dividing each by its continuation's
    length in characters) — lm-eval's `acc` and `acc_norm` predictions. Ties go to the first."""
    if len(logprobs) != len(choices) or not choices:
        raise ValueError(f"{len(logprobs)} log-likelihoods for {len(choices)} choices")
    raw = max(range(len(choices)), key=lambda i: logprobs[i])
    norm = max(range(len(choices)), key=lambda i: logprobs[i] / max(len(choices[i]), 1))
    return raw, norm


def accuracy(predictions: Sequence[int], golds: Sequence[int]) -> float:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return float("nan")
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)


# --- extractive QA (official SQuAD v1.1 evaluate script) --------------------------------------


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, drop ASCII punctuation, the articles a/an/the, extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, references: Sequence[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(r) for r in references))


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, references: Sequence[str]) -> float:
    return max(_f1(prediction, r) for r in references)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]
                 ) -> dict[str, float]:
    """Mean F1 and exact match in percent, as the SQuAD script reports them."""
    n = len(predictions)
    if n != len(references):
        raise ValueError(f"{n} predictions for {len(references)} reference lists")
    if n == 0:
        return {"f1": float("nan"), "exact_match": float("nan")}
    f1 = sum(squad_f1(p, r) for p, r in zip(predictions, references, strict=True))
    em = sum(squad_exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    return {"f1": 100.0 * f1 / n, "exact_match": 100.0 * em / n}


# --- translation (sacrebleu, corpus level) ----------------------------------------------------

# sacrebleu's 13a tokenizer splits on spaces and punctuation only, which leaves a Chinese or Thai
# sentence as one "word". Targets in these scripts get sacrebleu's own zh / character tokenizers
# (its ja/ko defaults need MeCab, which is not a dependency).
_BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "ko": "char", "th": "char", "lo": "char",
                  "km": "char", "my": "char"}


def bleu_tokenizer(target_language: str) -> str:
    return _BLEU_TOKENIZE.get(target_language, "13a")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *,
                tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (one reference per segment), 0..100."""
    _check_pairs(hypotheses, references)
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score


def corpus_chrf_pp(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """chrF++ (character 6-grams + word bigrams, beta 2), 0..100."""
    _check_pairs(hypotheses, references)
    return sacrebleu.corpus_chrf(list(hypotheses), [list(references)], word_order=2).score


@functools.cache
def _sentencepiece(model_path: str):
    processor = sentencepiece.SentencePieceProcessor()
    processor.Load(model_path)
    return processor


def corpus_spbleu(hypotheses: Sequence[str], references: Sequence[str], *,
                  spm_model: str | Path) -> float:
    """spBLEU: BLEU over SentencePiece pieces of a local model file (e.g. the FLORES-200 model
    sacrebleu's `tokenize="flores200"` would download), tokenised the way sacrebleu's
    TokenizerSPM does, then scored with no further tokenisation."""
    _check_pairs(hypotheses, references)
    path = Path(spm_model)
    if not path.is_file():
        raise FileNotFoundError(f"spBLEU model {path} does not exist (a SentencePiece .model)")
    sp = _sentencepiece(str(path))

    def pieces(line: str) -> str:
        return " ".join(sp.EncodeAsPieces(line))

    return sacrebleu.corpus_bleu([pieces(h) for h in hypotheses],
                                 [[pieces(r) for r in references]], tokenize="none").score


def translation_scores(hypotheses: Sequence[str], references: Sequence[str], *,
                       target_language: str, spm_model: str | Path | None = None
                       ) -> dict[str, float]:
    scores = {"bleu": corpus_bleu(hypotheses, references,
                                  tokenize=bleu_tokenizer(target_language)),
              "chrf++": corpus_chrf_pp(hypotheses, references)}
    if spm_model:
        scores["spbleu"] = corpus_spbleu(hypotheses, references, spm_model=spm_model)
    return scores


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")


# --- MGSM -----------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _ascii_digits(text: str) -> str:
    """Bengali, Thai, Devanagari ... decimal digits -> 0-9 (models answer in the script)."""
    return "".join(str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii()
                   and unicodedata.digit(ch, None) is not None else ch for ch in text)


def extract_number(text: str) -> float | None:
    """The last number in a generated answer (commas as thousands separators), or None."""
    matches = _NUMBER.findall(_ascii_digits(text))
    for match in reversed(matches):
        try:
            return float(match.replace(",", "").rstrip("."))
        except ValueError:
            continue
    return None


def number_matches(prediction: str, gold: str) -> bool:
    value, target = extract_number(prediction), extract_number(gold)
    if target is None:
        raise ValueError(f"gold answer {gold!r} holds no number")
    return value is not None and abs(value - target) < 1e-6


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percent of predictions equal to the reference after stripping surrounding space."""
    _check_pairs(predictions, references)
    if not predictions:
        return float("nan")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(predictions)
