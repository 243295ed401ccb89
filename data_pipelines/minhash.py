"""MinHash-LSH near-duplicate detection, as pure functions the Beam transforms call.

Signature: MinHash over word 5-gram shingles (lower-cased, punctuation-only tokens dropped; words
from the language's segmenter, so zh/ja/th get real words), with datatrove's scheme (FineWeb's):
xxhash-64 of each shingle, then `num_perm` hash functions (a*h + b) mod (2^61 - 1), vectorised
over all shingles of a document with numpy. LSH: `bands` x `rows` (14 x 8 = 112 permutations by
default, FineWeb's setting: P(candidate) = 1-(1-J^8)^14, ~0.92 at J=0.8, ~0.5 at J=0.72).
Clustering: union-find over candidate edges, one survivor per connected component (the smallest
uid, so the result does not depend on worker order).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import xxhash

from data_pipelines.words import words_of

_MERSENNE = np.uint64((1 << 61) - 1)
_EMPTY = np.uint64((1 << 61) - 1)  # every slot of a document without any shingle
BAND_DIGEST = 12  # bytes of blake2b per band key


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def shingles_of_words(words: list[str], n: int) -> set[str]:
    words = [w.lower() for w in words if any(c.isalnum() for c in w)]
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def shingles(text: str, lang: str, n: int) -> set[str]:
    return shingles_of_words(words_of(text, lang), n)


@functools.cache
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    b = rng.randint(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    return a, b


def signature_of_words(words: list[str], cfg: MinHashConfig) -> np.ndarray:
    """uint64[num_perm]: per hash function, the minimum over the document's shingles."""
    sh = shingles_of_words(words, cfg.ngram)
    if not sh:
        return np.full(cfg.num_perm, _EMPTY, dtype=np.uint64)
    h = np.fromiter((xxhash.xxh64_intdigest(s) for s in sh), dtype=np.uint64, count=len(sh))
    a, b = _permutations(cfg.num_perm, cfg.seed)
    # uint64 products wrap mod 2^64 before the mod, exactly as datatrove computes them
    return ((h[:, None] * a + b) % _MERSENNE).min(axis=0)


def signature(text: str, lang: str, cfg: MinHashConfig) -> np.ndarray:
    return signature_of_words(words_of(text, lang), cfg)


def band_digests(sig: np.ndarray, cfg: MinHashConfig) -> str:
    """The LSH band keys of a signature, as one hex string (BAND_DIGEST bytes per band): compact
    enough to travel with the document from the per-document DoFn to the dedup shuffle."""
    return "".join(hashlib.blake2b(sig[b * cfg.rows:(b + 1) * cfg.rows].tobytes(),
                                   digest_size=BAND_DIGEST).hexdigest() for b in range(cfg.bands))


def band_keys_of(digests: str, lang: str) -> list[str]:
    """One LSH bucket key per band; documents of different languages never share a bucket."""
    w = 2 * BAND_DIGEST
    return [f"{lang}:{b}:{digests[b * w:(b + 1) * w]}" for b in range(len(digests) // w)]


def band_keys(sig: np.ndarray, lang: str, cfg: MinHashConfig) -> list[str]:
    return band_keys_of(band_digests(sig, cfg), lang)


def bucket_edges(uids: list[str]) -> list[tuple[str, str]]:
    """A bucket with several documents -> star edges from its smallest uid."""
    members = sorted(set(uids))
    return [(members[0], u) for u in members[1:]]


class UnionFind:
    """Union-find whose root is always the smallest member (deterministic survivors)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def merge(self, other: UnionFind) -> None:
        for node, parent in other.parent.items():
            self.union(node, parent)

    def roots(self) -> dict[str, str]:
        return {node: self.find(node) for node in list(self.parent)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0
