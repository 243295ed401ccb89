"""Word segmentation for the heuristic filters and MinHash shingles, as datatrove `WordTokenizer`s.

FineWeb-2 calls every filter with `language="fra_Latn"` etc., so datatrove picks the word
tokenizer from its `tokenizer_assignment.csv`: spaCy's blank tokenizer for most of our languages
(jieba-segmented for zh, Sudachi for ja), pythainlp for th, Kiwi for ko, IndicNLP for bn/ur/ne,
Stanza for kk. The per-language thresholds were fitted on those token streams (punctuation and
numbers count as words in the alphabetic-words ratio), so we use exactly that assignment
(`load_word_tokenizer(GLOT_CODES[lang])`) wherever it runs offline, and name each substitute:

  ko: Kiwi with its default model: datatrove asks for model_type "sbg", which kiwipiepy_model 0.24
      does not ship.
  kk: Stanza downloads its model at run time (no network here).
  bn, ur, ne: indic-nlp-library pulls Sphinx and pandas; its `trivial_tokenize` splits on spaces
      and punctuation, which `RuleWordTokenizer` reproduces.
  vi: spaCy's Vietnamese needs pyvi (scikit-learn + a CRF model) to join syllables into words;
      the rule tokenizer yields syllables, so word-length statistics are per syllable.

`RuleWordTokenizer` approximates spaCy's blank tokenizer: words (inner apostrophes/hyphens kept),
numbers with their inner separators ("12:30", "1.000,5", "2016/17") and dotted abbreviations
("z.B.") as one token, runs of the
same punctuation mark ("...", "!!") as one token, other punctuation marks one token each, French/
Italian elisions ("l'", "d'") split off. Languages outside our table (bitext) get it too.
"""

from __future__ import annotations

import functools

import regex
from datatrove.utils.text import split_into_words
from datatrove.utils.word_tokenizers import (
    KiwiTokenizer,
    SpaCyTokenizer,
    WhitespaceTokenizer,
    WordTokenizer,
    chunk_text_on_bytes,
    load_word_tokenizer,
)

from data_pipelines.languages import GLOT_CODES

_ABBREV = r"(?:\p{L}{1,3}\.){2,}"  # "z.B.", "B.C.", "μ.μ."
_WORD = r"\p{L}[\p{L}\p{M}\p{N}]*(?:['’\-·][\p{L}\p{M}\p{N}]+)*"
_NUMBER = r"\p{N}+(?:[.,:/\-]\p{N}+)*"
_PUNCT_RUN = r"([^\s\p{L}\p{M}\p{N}])\1*"
_SPACED = regex.compile(rf"{_ABBREV}|{_WORD}|{_NUMBER}|{_PUNCT_RUN}")
_ELISION = regex.compile(rf"\p{{L}}{{1,2}}['’](?=\p{{L}})|{_ABBREV}|{_WORD}|{_NUMBER}|{_PUNCT_RUN}")

# Languages whose FineWeb-2 tokenizer cannot run offline here -> why (see the module docstring).
_INDIC = "rules (IndicNLP trivial tokenizer)"
SUBSTITUTED = {"ko": "kiwi default model", "kk": "rules (Stanza needs a download)",
               "bn": _INDIC, "ur": _INDIC, "ne": _INDIC, "vi": "rules (spaCy vi needs pyvi)"}


class RuleWordTokenizer(WhitespaceTokenizer):
    """Space-delimited scripts; sentence splitting is datatrove's punctuation rule."""

    def __init__(self, language: str = "xx"):
        super().__init__()
        self.language = language
        self._pattern = _ELISION if language in ("fr", "it", "ca") else _SPACED

    def word_tokenize(self, text: str) -> list[str]:
        return [m.group(0) for m in self._pattern.finditer(text)]


# Lexemes a spaCy pipeline may add to its initial vocabulary (Indonesian starts with ~32k) before
# FastSpaCyTokenizer rebuilds it: bounded memory (~25 MB per language); a rebuild costs well
# under a second and comes every ~100k new word types.
VOCAB_CAP = 100_000


class FastSpaCyTokenizer(SpaCyTokenizer):
    """datatrove's SpaCyTokenizer with the same tokens at about twice the speed: it calls the
    pipeline's tokenizer alone (datatrove also runs the sentencizer pipe, which word tokens do not
    need) and keeps lexemes between documents instead of opening a `memory_zone` per call, which
    re-creates every lexeme of every document. Memory stays bounded by rebuilding the pipeline
    once its vocabulary passes VOCAB_CAP (tokens do not depend on the vocabulary's contents)."""

    _base_vocab = 0

    def word_tokenize(self, text: str) -> list[str]:
        if self._tokenizer is None:
            self._base_vocab = len(self.tokenizer.vocab)
        elif len(self._tokenizer.vocab) > self._base_vocab + VOCAB_CAP:
            self._tokenizer = None
            self._base_vocab = len(self.tokenizer.vocab)
        tokenize = self.tokenizer.tokenizer
        chunks = [text] if self.language != "ja" else chunk_text_on_bytes(text, 40000)
        try:
            docs = [tokenize(c) for c in chunks]
        except Exception:  # datatrove's workaround: this string breaks spaCy's tokenizer
            if "IS_ALPHA" not in text:
                raise
            docs = [tokenize(c.replace("IS_ALPHA", "")) for c in chunks]
        return [w for d in docs for t in d if (w := t.text.strip())]


def stock_word_tokenizer(lang: str) -> WordTokenizer:
    """A new instance of the tokenizer datatrove itself would run for `lang` (FineWeb-2's
    assignment, or the substitute in `SUBSTITUTED`), for comparisons with `word_tokenizer`."""
    if lang == "ko":
        return KiwiTokenizer(model_type=None)
    if lang in SUBSTITUTED or lang not in GLOT_CODES:
        return RuleWordTokenizer(lang)
    return load_word_tokenizer(GLOT_CODES[lang])


@functools.cache
def word_tokenizer(lang: str) -> WordTokenizer:
    """The (process-wide, lazily loaded) word tokenizer for an ISO 639-1 code: FineWeb-2's own
    datatrove assignment (spaCy ones as `FastSpaCyTokenizer`, same tokens), or the substitute
    named in `SUBSTITUTED`."""
    tok = stock_word_tokenizer(lang)
    if type(tok) is SpaCyTokenizer:
        return FastSpaCyTokenizer(tok.language, tok.config)
    return tok


def words_of(text: str, lang: str) -> list[str]:
    """The words of a document, tokenized once: datatrove's filters call the same cached
    `split_into_words(text, tokenizer)` (an LRU cache keyed by text and tokenizer object), so the
    quality filters and the MinHash shingles of one document share one tokenization."""
    return split_into_words(text, word_tokenizer(lang))
