"""Heuristic quality filters: datatrove's Gopher repetition, FineWeb quality and Gopher quality
filters (in FineWeb-2's order), configured per language from `thresholds.py` and fed our word
tokenizers (`words.py`)."""

from __future__ import annotations

from collections.abc import Callable

from datatrove.data import Document
from datatrove.pipeline.filters import (
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.word_tokenizers import WordTokenizer

from data_pipelines.thresholds import thresholds_for
from data_pipelines.words import word_tokenizer

QUALITY_STEPS = ("gopher_repetition", "fineweb_quality", "gopher_quality")


class QualityFilters:
    """`check(text, lang) -> None` when the document passes, else `(step, reason)`.

    Filters are built lazily per language, so a worker only loads the segmenters it needs.
    """

    def __init__(self, steps: tuple[str, ...] = QUALITY_STEPS, overrides: dict | None = None,
                 tokenizer_for: Callable[[str], WordTokenizer] = word_tokenizer):
        """`overrides`: {lang or "*": {filter: {kwarg: value}}} on top of the defaults
        (`thresholds.thresholds_for`). `tokenizer_for`: lang -> word tokenizer (the benchmark
        passes datatrove's stock ones)."""
        unknown = set(steps) - set(QUALITY_STEPS)
        if unknown:
            raise ValueError(f"unknown quality filter(s) {sorted(unknown)}; known: {QUALITY_STEPS}")
        self.steps = steps
        self.overrides = overrides or {}
        self.tokenizer_for = tokenizer_for
        self._by_lang: dict[str, list] = {}

    def filters_for(self, lang: str) -> list[tuple[str, object]]:
        if lang not in self._by_lang:
            t = thresholds_for(lang, self.overrides)
            tok = self.tokenizer_for(lang)
            built = {
                "gopher_repetition": GopherRepetitionFilter(language=tok, **t.gopher_repetition),
                "fineweb_quality": FineWebQualityFilter(language=tok, **t.fineweb_quality),
                "gopher_quality": GopherQualityFilter(language=tok, **t.gopher_quality),
            }
            self._by_lang[lang] = [(s, built[s]) for s in self.steps]
        return self._by_lang[lang]

    def check(self, text: str, lang: str, doc_id: str = "") -> tuple[str, str] | None:
        doc = Document(text=text, id=doc_id)
        for step, flt in self.filters_for(lang):
            result = flt.filter(doc)
            ok, reason = result if isinstance(result, tuple) else (result, None)
            if not ok:
                return step, reason or "rejected"
        return None
