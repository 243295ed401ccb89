"""The paper's 29 languages, their resource tiers and data-pool sizes (one home for these facts).

Source: Marco-LLM (arXiv 2412.04003), see ../shared/MARCO_PAPER.md. The paper publishes the pool
of English (1459.7B tokens) and Chinese (214.7B), and only a *range* for the others: 41.8B to
442.8B per other high-resource language and 2.9B (ms) to 376.8B (el) per low-resource language.
The per-language values below are our choice inside those ranges (endpoints placed where the paper
puts them, the rest ordered like the languages' CommonCrawl/CulturaX sizes); they feed only the
temperature sampling inside a group, and a run with real shards uses the shards' own token counts
instead (`pool_sizes="sources"`).
"""

from __future__ import annotations

HIGH_RESOURCE: tuple[str, ...] = ("en", "zh", "ar", "de", "es", "fr", "ko", "ja", "pt", "tr")
LOW_RESOURCE: tuple[str, ...] = (
    "bn", "he", "id", "it", "ms", "nl", "pl", "ru", "th", "uk",
    "ur", "vi", "cs", "el", "hu", "kk", "ro", "az", "ne",
)  # fmt: skip
LANGUAGES: tuple[str, ...] = HIGH_RESOURCE + LOW_RESOURCE
OTHER_HIGH_RESOURCE: tuple[str, ...] = tuple(x for x in HIGH_RESOURCE if x not in ("en", "zh"))

# English names, as the translation templates print them.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "ar": "Arabic", "de": "German", "es": "Spanish",
    "fr": "French", "ko": "Korean", "ja": "Japanese", "pt": "Portuguese", "tr": "Turkish",
    "bn": "Bengali", "he": "Hebrew", "id": "Indonesian", "it": "Italian", "ms": "Malay",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "th": "Thai", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "cs": "Czech", "el": "Greek", "hu": "Hungarian",
    "kk": "Kazakh", "ro": "Romanian", "az": "Azerbaijani", "ne": "Nepali",
}  # fmt: skip

# Billions of tokens in the cleaned pool per language (see module docstring for which are ours).
POOL_TOKENS_B: dict[str, float] = {
    # published
    "en": 1459.7, "zh": 214.7,
    # other high-resource: paper range 41.8 .. 442.8
    "de": 442.8, "es": 410.5, "fr": 352.1, "ja": 215.3, "pt": 187.6, "ar": 71.9, "tr": 66.2,
    "ko": 41.8,
    # low-resource: paper range 2.9 (ms) .. 376.8 (el)
    "el": 376.8, "ru": 361.4, "it": 240.7, "pl": 130.2, "nl": 126.9, "vi": 118.4, "cs": 65.3,
    "hu": 52.1, "ro": 50.7, "uk": 45.6, "id": 30.8, "th": 26.4, "he": 14.7, "bn": 10.2,
    "kk": 6.1, "az": 5.8, "ur": 5.2, "ne": 3.4, "ms": 2.9,
}  # fmt: skip

# Non-web sources' pools (billions of tokens), as published.
PARALLEL_POOL_B = 103.0
KNOWLEDGE_POOL_B = 65.0
SYNTHETIC_POOL_B = 6.0

# Bitext pairs: English-centric, every other language (OPUS/CCAligned are mostly en-xx).
BITEXT_PAIRS: tuple[tuple[str, str], ...] = tuple(("en", x) for x in LANGUAGES if x != "en")


def language_name(code: str) -> str:
    """English name of a language code; a clear error for codes outside the paper's 29."""
    try:
        return LANGUAGE_NAMES[code]
    except KeyError:
        raise ValueError(
            f"unknown language code {code!r}; expected one of {', '.join(LANGUAGES)}"
        ) from None
