"""Shared CLI parsing helpers: our flags via argparse, the rest goes to Beam's PipelineOptions."""

from __future__ import annotations


def parse_lang_floats(spec: str, flag: str) -> dict[str, float]:
    """'0.7' -> {'*': 0.7}; 'en=0.7,zh=0.5' -> {'en': 0.7, 'zh': 0.5}."""
    if not spec:
        return {}
    out: dict[str, float] = {}
    for item in spec.split(","):
        key, sep, value = item.rpartition("=")
        try:
            out[key.strip() if sep else "*"] = float(value)
        except ValueError as e:
            raise ValueError(
                f"{flag}={spec!r}: expected 'X' or 'lang=X,lang=X' with numbers X") from e
    return out


def expand_star(values: dict[str, float], languages: tuple[str, ...]) -> dict[str, float]:
    if "*" not in values:
        return values
    return {lang: values["*"] for lang in languages} | {k: v for k, v in values.items() if k != "*"}
