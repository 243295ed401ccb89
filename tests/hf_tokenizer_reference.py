"""An independent Qwen2 tokenizer built with Hugging Face `tokenizers` from the same ranks.

It follows the published layout of Qwen2's `tokenizer.json` (NFC normaliser; Split on the Qwen2
regex then ByteLevel without its own regex; merge-based BPE; ByteLevel decoder) and derives the
merge list from the tiktoken ranks the way tiktoken->HF conversion does: every token of length
>= 2 contributes the merges of its two-way splits whose halves are tokens, ordered by the
token's rank. Our tokenizer runs tiktoken's rank-based BPE instead, so agreement checks the ranks
file, the regex, the normaliser and the special tokens together.
"""

from __future__ import annotations

import functools

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from marco_jax.data.tokenizer import (
    QWEN2_PRETOKENIZE_REGEX,
    SPECIAL_TOKENS,
    default_ranks_path,
    load_tiktoken_ranks,
)


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


@functools.cache
def build_hf_qwen2_tokenizer() -> Tokenizer:
    ranks = load_tiktoken_ranks(default_ranks_path())
    to_unicode = gpt2_byte_to_unicode()
    as_str = lambda b: "".join(to_unicode[x] for x in b)
    vocab = {as_str(token): rank for token, rank in ranks.items()}
    merges = [(as_str(a), as_str(b)) for a, b in merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False, fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    for text, expected_id in specials:
        assert tok.token_to_id(text) == expected_id, (text, tok.token_to_id(text), expected_id)
    return tok
