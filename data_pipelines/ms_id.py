"""A second opinion for Malay vs Indonesian, where lid.176 cannot tell them apart.

lid.176 labels most Standard Malay `id` (on FLORES-200 dev, 8-sentence documents: 24% of the
Malay labelled `ms`). lingua (`lingua-language-detector`, models inside the wheel, offline),
restricted to these two languages, separates them: 99% / 98% on the same documents
(tests/test_clean_ms_id.py). It runs only on documents lid.176 puts in the ms/id pair.
"""

from __future__ import annotations

PAIR = ("ms", "id")


def check_available() -> None:
    import importlib.util

    if importlib.util.find_spec("lingua") is None:
        raise ImportError("the ms/id second opinion needs lingua-language-detector (pip install "
                          "-e '.[data]'); or pass --no_ms_id_second_opinion")


class MsIdDetector:
    """`decide(texts) -> ["ms" | "id" | None, ...]` (None: lingua abstains, e.g. no letters)."""

    def __init__(self):
        check_available()
        from lingua import Language, LanguageDetectorBuilder

        self._codes = {Language.MALAY: "ms", Language.INDONESIAN: "id"}
        self._detector = None
        self._builder = LanguageDetectorBuilder.from_languages(*self._codes)

    def decide(self, texts: list[str]) -> list[str | None]:
        if self._detector is None:  # loads the two languages' n-gram models (~0.3 s), once
            self._detector = self._builder.build()
        return [self._codes.get(self._detector.detect_language_of(t)) for t in texts]


def resolve(texts: list[str], preds: list[list[tuple[str, float]]],
            detector: MsIdDetector) -> list[tuple[str, float]]:
    """lid.176 top-2 predictions -> (language, score). Where the top label is ms or id, the
    detector picks between them and the score is the pair's (ms + id) probability: lid.176's
    confidence that the text is one of the two, split between them by its confusion."""
    out = [p[0] if p else ("und", 0.0) for p in preds]
    ask = [i for i, p in enumerate(preds) if p and p[0][0] in PAIR]
    for i, lang in zip(ask, detector.decide([texts[i] for i in ask]), strict=True):
        score = sum(s for label, s in preds[i] if label in PAIR)
        out[i] = (lang or out[i][0], min(1.0, score))
    return out
