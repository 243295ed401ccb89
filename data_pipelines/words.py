"""Word segmentation for the heuristic filters, as datatrove `WordTokenizer`s.

datatrove's filters count words with `split_into_words(text, language)`, where `language` may be a
`WordTokenizer` instance. Its own assignment table needs spaCy (+ a model per language) or
Stanza models; we pass these tokenizers instead, using the same segmenters datatrove/spaCy use
where word counts depend on segmentation:
  zh: jieba (spaCy's zh segmenter in datatrove's config)   ja: SudachiPy split mode A (spaCy's ja)
  th: pythainlp newmm-safe (datatrove's ThaiTokenizer)     ko: Kiwi (datatrove's KiwiTokenizer)
and for space-delimited scripts a Unicode rule equivalent to spaCy's blank tokenizer on web text:
words (with inner apostrophes/hyphens), numbers and single punctuation marks; French/Italian
elisions ("l'", "d'") are split off as spaCy does, since they are FineWeb-2 stop words.
"""

from __future__ import annotations

import functools

import regex
from datatrove.utils.word_tokenizers import (
    KiwiTokenizer,
    ThaiTokenizer,
    WhitespaceTokenizer,
    WordTokenizer,
)

_WORD = r"\p{L}[\p{L}\p{M}\p{N}]*(?:['’\-·][\p{L}\p{M}\p{N}]+)*|\p{N}+(?:[.,]\p{N}+)*"
_SPACED = regex.compile(rf"{_WORD}|[^\s\p{{L}}\p{{M}}\p{{N}}]")
_ELISION = regex.compile(rf"\p{{L}}{{1,2}}['’](?=\p{{L}})|{_WORD}|[^\s\p{{L}}\p{{M}}\p{{N}}]")


class RuleWordTokenizer(WhitespaceTokenizer):
    """Space-delimited scripts; sentence splitting is datatrove's punctuation rule."""

    def __init__(self, language: str = "xx"):
        super().__init__()
        self.language = language
        self._pattern = _ELISION if language in ("fr", "it", "ca") else _SPACED

    def word_tokenize(self, text: str) -> list[str]:
        return self._pattern.findall(text)


class JiebaTokenizer(WhitespaceTokenizer):
    def __init__(self):
        super().__init__()
        self.language = "zh"

    def word_tokenize(self, text: str) -> list[str]:
        import jieba

        jieba.setLogLevel(60)
        return [w for w in jieba.lcut(text) if w.strip()]


class SudachiTokenizer(WhitespaceTokenizer):
    def __init__(self):
        super().__init__()
        self.language = "ja"
        self._tok = None

    def word_tokenize(self, text: str) -> list[str]:
        if self._tok is None:
            from sudachipy import Dictionary, SplitMode

            self._tok = Dictionary().tokenizer(SplitMode.A)
        out: list[str] = []
        # Sudachi caps input at 49,149 bytes; cut on line breaks to stay far below it.
        for chunk in _chunks(text, 10_000):
            out.extend(m.surface() for m in self._tok.tokenize(chunk))
        return [w for w in out if w.strip()]


def _chunks(text: str, size: int) -> list[str]:
    if len(text) <= size:
        return [text]
    parts, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        cut = text.rfind("\n", start, end) if end < len(text) else end
        end = cut + 1 if cut > start else end
        parts.append(text[start:end])
        start = end
    return parts


@functools.cache
def word_tokenizer(lang: str) -> WordTokenizer:
    """The (process-wide, lazily loaded) word tokenizer for an ISO 639-1 code."""
    if lang == "zh":
        return JiebaTokenizer()
    if lang == "ja":
        return SudachiTokenizer()
    if lang == "th":
        return ThaiTokenizer()
    if lang == "ko":
        # kiwipiepy_model 0.24 ships no "sbg" model (datatrove's default); use Kiwi's default.
        return KiwiTokenizer(model_type=None)
    return RuleWordTokenizer(lang)
