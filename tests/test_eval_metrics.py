"""Metrics vs sacrebleu's own corpus scores and hand-computed values."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from marco_jax.evals import metrics


def _flores(shared_data, code: str, n: int = 40) -> list[str]:
    path = shared_data / "benchmarks" / "flores200" / "dev" / f"{code}.dev"
    return path.read_text(encoding="utf-8").splitlines()[:n]


def _degrade(lines: list[str]) -> list[str]:
    """Plausible system output: drop every third word, swap the first two words of odd lines."""
    out = []
    for i, line in enumerate(lines):
        words = [w for j, w in enumerate(line.split()) if j % 3 != 2]
        if i % 2 and len(words) > 1:
            words[0], words[1] = words[1], words[0]
        out.append(" ".join(words))
    return out


def test_choice_predictions_acc_norm_divides_by_characters():
    # raw: -2 > -3; per character: -2/2 = -1 < -3/7
    assert metrics.choice_predictions([-2.0, -3.0], [" a", " abcdef"]) == (0, 1)
    assert metrics.choice_predictions([-1.0, -1.0], [" x", " y"]) == (0, 0)  # ties: first
    assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    with pytest.raises(ValueError):
        metrics.choice_predictions([-1.0], [" a", " b"])


def test_squad_normalisation_and_f1_by_hand():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    # pred "cat sat" vs ref "cat sat on mat": P = 2/2, R = 2/4 -> F1 = 2/3
    assert metrics.squad_f1("the cat sat", ["a cat sat on mat"]) == pytest.approx(2 / 3)
    assert metrics.squad_f1("dog", ["cat", "a dog"]) == 1.0  # best reference counts
    assert metrics.squad_exact_match("An apple.", ["apple"]) == 1.0
    scores = metrics.squad_scores(["the cat sat", "x"], [["a cat sat on mat"], ["y"]])
    assert scores["f1"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["exact_match"] == 0.0


def test_bleu_by_hand():
    hyp, ref = "the cat sat on the mat today", "the cat sat on a mat today"
    # clipped n-gram precisions 6/7, 4/6, 2/5, 1/4, equal lengths (no brevity penalty)
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert metrics.corpus_bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-9)
    assert metrics.corpus_bleu([ref], [ref]) == pytest.approx(100.0)
    assert metrics.corpus_chrf_pp([ref], [ref]) == pytest.approx(100.0)


@pytest.mark.parametrize("code,lang", [("deu_Latn", "de"), ("zho_Hans", "zh"),
                                       ("tha_Thai", "th")])
def test_bleu_chrf_equal_sacrebleu_corpus_scores(shared_data, code, lang):
    refs = _flores(shared_data, code)
    hyps = _degrade(refs)
    tokenize = metrics.bleu_tokenizer(lang)
    ours = metrics.translation_scores(hyps, refs, target_language=lang)
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    chrf = sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    assert ours["bleu"] == bleu and ours["chrf++"] == chrf
    assert 5 < ours["bleu"] < 95 and 5 < ours["chrf++"] < 95  # a real, non-trivial score
    assert "spbleu" not in ours


def test_spbleu_equals_sacrebleu_flores200_tokenizer(shared_data, tmp_path, monkeypatch):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(_flores(shared_data, "eng_Latn", 400)
                                + _flores(shared_data, "deu_Latn", 400)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tiny"),
                                   vocab_size=400, model_type="unigram",
                                   minloglevel=2)
    model = tmp_path / "tiny.model"
    # sacrebleu's own flores200 tokenizer reads <SACREBLEU_DIR>/models/flores200sacrebleuspm:
    # put the same model there so the reference needs no download.
    from sacrebleu.tokenizers import tokenizer_spm

    (tmp_path / "sb" / "models").mkdir(parents=True)
    (tmp_path / "sb" / "models" / "flores200sacrebleuspm").write_bytes(model.read_bytes())
    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sb"))
    refs = _flores(shared_data, "deu_Latn")
    hyps = _degrade(refs)
    reference = sacrebleu.corpus_bleu(hyps, [refs], tokenize="flores200").score
    ours = metrics.translation_scores(hyps, refs, target_language="de", spm_model=model)
    assert ours["spbleu"] == pytest.approx(reference, abs=1e-9)
    assert ours["spbleu"] != ours["bleu"]
    with pytest.raises(FileNotFoundError):
        metrics.corpus_spbleu(hyps, refs, spm_model=tmp_path / "missing.model")


def test_mgsm_number_extraction():
    assert metrics.extract_number("She earns $1,234.50 a day.") == 1234.5
    assert metrics.extract_number("first 3 then 18.") == 18.0
    assert metrics.extract_number("উত্তর হল ১৮") == 18.0  # Bengali digits
    assert metrics.extract_number("no digits") is None
    assert metrics.number_matches("The answer is 18", "18")
    assert not metrics.number_matches("The answer is 17", "18")
    assert metrics.exact_match([" a", "b"], ["a", "c"]) == 50.0
    assert math.isnan(metrics.exact_match([], []))
