"""Language codes and English names of the benchmarks' languages (the paper's 29 plus those that
XCOPA, XNLI, MGSM, Belebele, FLORES and MMMLU add). Configs name languages by ISO 639-1 code;
loaders map them to each benchmark's own file names."""

from __future__ import annotations

from marco_jax.data.languages import LANGUAGE_NAMES
from marco_jax.evals.tasks.base import EvalDataError

NAMES: dict[str, str] = {
    **LANGUAGE_NAMES,
    "et": "Estonian", "ht": "Haitian Creole", "qu": "Quechua", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "hi": "Hindi", "bg": "Bulgarian", "tl": "Tagalog", "km": "Khmer",
    "lo": "Lao", "my": "Burmese", "yo": "Yoruba", "eu": "Basque", "fi": "Finnish",
}  # fmt: skip

# ISO 639-1 -> FLORES-200 code (also Belebele's file names).
FLORES_CODES: dict[str, str] = {
    "en": "eng_Latn", "zh": "zho_Hans", "ar": "arb_Arab", "de": "deu_Latn", "es": "spa_Latn",
    "fr": "fra_Latn", "ko": "kor_Hang", "ja": "jpn_Jpan", "pt": "por_Latn", "tr": "tur_Latn",
    "ru": "rus_Cyrl", "it": "ita_Latn", "nl": "nld_Latn", "pl": "pol_Latn", "id": "ind_Latn",
    "vi": "vie_Latn", "th": "tha_Thai", "he": "heb_Hebr", "uk": "ukr_Cyrl", "ms": "zsm_Latn",
    "bn": "ben_Beng", "cs": "ces_Latn", "ur": "urd_Arab", "kk": "kaz_Cyrl", "el": "ell_Grek",
    "ro": "ron_Latn", "hu": "hun_Latn", "ne": "npi_Deva", "az": "azj_Latn", "km": "khm_Khmr",
    "lo": "lao_Laoo", "my": "mya_Mymr", "tl": "tgl_Latn", "sw": "swh_Latn", "hi": "hin_Deva",
    "et": "est_Latn", "ta": "tam_Taml", "te": "tel_Telu", "fi": "fin_Latn", "bg": "bul_Cyrl",
}  # fmt: skip


def language_name(code: str) -> str:
    try:
        return NAMES[code]
    except KeyError:
        raise EvalDataError(f"unknown language code {code!r}; known: "
                            f"{', '.join(sorted(NAMES))}") from None


def flores_code(code: str) -> str:
    try:
        return FLORES_CODES[code]
    except KeyError:
        raise EvalDataError(f"no FLORES-200 code known for language {code!r}; known: "
                            f"{', '.join(sorted(FLORES_CODES))}") from None
