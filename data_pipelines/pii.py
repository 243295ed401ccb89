"""PII scrubbing: e-mail and public IP addresses with datatrove's PIIFormatter (FineWeb's rules),
plus phone numbers, which datatrove does not cover."""

from __future__ import annotations

import re

from datatrove.pipeline.formatters import PIIFormatter

# International (+CC ...) or national numbers written with separators, 8-15 digits in total; bare
# digit runs (years, prices, IDs) are left alone because they need a separator or a leading '+'.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])"
)
PHONE_REPLACEMENT = "<PHONE>"
# Digit groups that are not phone numbers: IPv4 addresses (handled above) and dates.
_NOT_PHONE = re.compile(
    r"\d{1,3}(?:\.\d{1,3}){3}|\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{4}")


def _phone(match: re.Match) -> str:
    if _NOT_PHONE.fullmatch(match.group(0)):
        return match.group(0)
    digits = sum(c.isdigit() for c in match.group(0))
    has_sep = any(c in " .-()" for c in match.group(0))
    if 8 <= digits <= 15 and (has_sep or match.group(0).startswith("+")):
        return PHONE_REPLACEMENT
    return match.group(0)


class PIIScrubber:
    def __init__(self, emails: bool = True, ips: bool = True, phones: bool = True):
        self._dt = PIIFormatter(remove_emails=emails, remove_ips=ips)
        self._phones = phones

    def __call__(self, text: str) -> str:
        text = self._dt.format(text)
        if self._phones:
            text = _PHONE.sub(_phone, text)
        return text
