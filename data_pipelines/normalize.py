"""Text normalisation: mojibake repair, Unicode NFC, whitespace."""

from __future__ import annotations

import re

import ftfy

_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, ideographic space)
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Control and format characters that carry no text (keep \n, \t is folded into spaces; keep ZWJ/ZWNJ
# which are meaningful in Persian/Indic scripts).
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\ufffe]")


def normalize_text(text: str) -> str:
    """ftfy repair (mojibake, HTML entities left by extractors, curly-quote breakage), NFC,
    newline unification, one space between words, trimmed lines, at most one blank line."""
    text = ftfy.fix_text(text, normalization="NFC")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = _INVISIBLE.sub("", text)
    lines = [_HSPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()
