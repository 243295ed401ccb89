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


def parse_lid_accept(spec: str) -> dict[str, tuple[str, ...]]:
    """'ms=id' -> {'ms': ('id',)}; 'ms=id,ms=jv' -> {'ms': ('id', 'jv')}. Declared languages must
    be Marco languages; labels are ISO 639-1 (lid.176) or GlotLID codes as `lid.py` reports them."""
    from data_pipelines.languages import GLOT_CODES

    out: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        declared, sep, label = (x.strip() for x in item.partition("="))
        if not sep or not label or declared not in GLOT_CODES:
            raise ValueError(f"--lid_accept={spec!r}: expected 'declared=label,...' with declared "
                             f"one of {', '.join(GLOT_CODES)}, e.g. 'ms=id'")
        out[declared] = (*out.get(declared, ()), label)
    return out
