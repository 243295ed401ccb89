"""Token counting for the accounting: the real Qwen2 tokenizer, or a fast estimate."""

from __future__ import annotations

from collections.abc import Callable

TOKEN_COUNTERS = ("qwen2", "whitespace")


def make_token_counter(name: str) -> Callable[[str], int]:
    if name == "qwen2":
        from marco_jax.data.tokenizer import get_tokenizer

        tok = get_tokenizer()
        return lambda text: len(tok.encode(text))
    if name == "whitespace":
        return lambda text: len(text.split())
    raise ValueError(f"--token_counter={name!r}: expected one of {TOKEN_COUNTERS}")
