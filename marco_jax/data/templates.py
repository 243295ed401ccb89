"""Translation templates that turn a bitext pair into a plain-text pretraining document.

The paper renders parallel data with 11 templates, in both directions; it prints two of them
(the first two below). The other nine are ours, in the same spirit. Which direction and which
template a pair gets is a pure function of the pair (a hash of both sides), so the rendering is
identical on every host, run and epoch, and spread evenly over templates and directions.
"""

from __future__ import annotations

import hashlib

from marco_jax.data.languages import language_name

TRANSLATION_TEMPLATES: tuple[str, ...] = (
    "Translate the text from {src_lang} to {tgt_lang}:\n{src_lang} text: {src}\n"
    "{tgt_lang} text: {tgt}",
    "The sentence {src} in {src_lang} means {tgt} in {tgt_lang}.",
    "{src_lang}: {src}\n{tgt_lang}: {tgt}",
    "Please translate the following {src_lang} text into {tgt_lang}.\nInput: {src}\n"
    "Output: {tgt}",
    'Q: How do you say the {src_lang} sentence "{src}" in {tgt_lang}?\nA: {tgt}',
    "{src}\n\nTranslation ({src_lang} to {tgt_lang}):\n{tgt}",
    "Here is a sentence in {src_lang}: {src}\nIts {tgt_lang} translation is: {tgt}",
    "[{src_lang}] {src}\n[{tgt_lang}] {tgt}",
    'In {src_lang}: "{src}". In {tgt_lang}: "{tgt}".',
    "{src_lang} original: {src}\n{tgt_lang} version: {tgt}",
    "What is the {tgt_lang} translation of this {src_lang} text?\n{src}\nAnswer: {tgt}",
)


def choose_rendering(lang_a: str, lang_b: str, text_a: str, text_b: str) -> tuple[bool, int]:
    """(swap direction?, template index) for a pair; deterministic, uniform over 2 x 11."""
    key = "\x1f".join((lang_a, lang_b, text_a, text_b)).encode("utf-8")
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return bool(h & 1), (h >> 1) % len(TRANSLATION_TEMPLATES)


def render_translation(lang_a: str, lang_b: str, text_a: str, text_b: str) -> str:
    """The training document for the pair (text_a in lang_a, text_b in lang_b)."""
    swap, template = choose_rendering(lang_a, lang_b, text_a, text_b)
    if swap:
        lang_a, lang_b, text_a, text_b = lang_b, lang_a, text_b, text_a
    return TRANSLATION_TEMPLATES[template].format(
        src_lang=language_name(lang_a), tgt_lang=language_name(lang_b),
        src=text_a.strip(), tgt=text_b.strip(),
    )
