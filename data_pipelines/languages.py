"""The 29 Marco-LLM languages and the codes other tools use for them.

lid.176 (fastText) labels are ISO 639-1 where one exists; GlotLID and FineWeb-2 use
ISO 639-3 + ISO 15924 script ("cmn_Hani"). One table maps between them so every other module
speaks ISO 639-1 only.
"""

from __future__ import annotations

from marco_jax.data.languages import LANGUAGES as MARCO_LANGUAGES  # the one home of the list

# ISO 639-1 -> the FineWeb-2 / GlotLID "iso639-3_Script" code (FineWeb-2 picks the macrolanguage's
# main member: Mandarin for zh, Standard Arabic for ar, Standard Malay for ms, North Azerbaijani
# for az, Nepali (individual language) for ne).
GLOT_CODES: dict[str, str] = {
    "en": "eng_Latn", "zh": "cmn_Hani", "ar": "arb_Arab", "de": "deu_Latn", "es": "spa_Latn",
    "fr": "fra_Latn", "ko": "kor_Hang", "ja": "jpn_Jpan", "pt": "por_Latn", "tr": "tur_Latn",
    "bn": "ben_Beng", "he": "heb_Hebr", "id": "ind_Latn", "it": "ita_Latn", "ms": "zsm_Latn",
    "nl": "nld_Latn", "pl": "pol_Latn", "ru": "rus_Cyrl", "th": "tha_Thai", "uk": "ukr_Cyrl",
    "ur": "urd_Arab", "vi": "vie_Latn", "cs": "ces_Latn", "el": "ell_Grek", "hu": "hun_Latn",
    "kk": "kaz_Cyrl", "ro": "ron_Latn", "az": "azj_Latn", "ne": "npi_Deva",
}
# Extra GlotLID labels that mean one of our languages (macrolanguage members / script variants).
_GLOT_ALIASES = {"zho_Hans": "zh", "zho_Hant": "zh", "cmn_Hans": "zh", "cmn_Hant": "zh",
                 "ara_Arab": "ar", "msa_Latn": "ms", "aze_Latn": "az", "nep_Deva": "ne",
                 "ell_Grek": "el"}
_FROM_GLOT = {v: k for k, v in GLOT_CODES.items()} | _GLOT_ALIASES


def parse_languages(spec: str) -> tuple[str, ...]:
    """'en,zh' -> ('en', 'zh'); 'all' -> the 29 Marco languages. Rejects unknown codes."""
    if spec.strip() == "all":
        return MARCO_LANGUAGES
    langs = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [lang for lang in langs if lang not in GLOT_CODES]
    if unknown or not langs:
        raise ValueError(f"--languages={spec!r}: unknown code(s) {unknown}; expected ISO 639-1 "
                         f"codes from {', '.join(MARCO_LANGUAGES)} or 'all'")
    return langs


def normalize_lid_label(label: str) -> str:
    """A fastText label ('__label__en', '__label__cmn_Hani') -> ISO 639-1 when it is one of ours,
    else the bare label (so wrong-language documents keep a readable language in reports)."""
    bare = label.removeprefix("__label__")
    return _FROM_GLOT.get(bare, bare)
