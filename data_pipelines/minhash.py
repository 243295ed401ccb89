"""MinHash-LSH near-duplicate detection, as pure functions the Beam transforms call.

Signature: datasketch MinHash over word 5-gram shingles (lower-cased, punctuation-only tokens
dropped; words from the language's segmenter, so zh/ja/th get real words). LSH: `bands` x `rows`
(14 x 8 = 112 permutations by default, FineWeb's setting: P(candidate) = 1-(1-J^8)^14, ~0.92 at
J=0.8, ~0.5 at J=0.72). Clustering: union-find over candidate edges, one survivor per connected
component (the smallest uid, so the result does not depend on worker order).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from datasketch import MinHash

from data_pipelines.words import word_tokenizer


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def shingles(text: str, lang: str, n: int) -> set[str]:
    words = [w.lower() for w in word_tokenizer(lang).word_tokenize(text)
             if any(c.isalnum() for c in w)]
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


_PERMUTATIONS: dict[tuple[int, int], MinHash] = {}


def signature(text: str, lang: str, cfg: MinHashConfig) -> np.ndarray:
    key = (cfg.num_perm, cfg.seed)
    if key not in _PERMUTATIONS:  # permutation generation is the costly part of MinHash()
        _PERMUTATIONS[key] = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32")
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32",
                permutations=_PERMUTATIONS[key].permutations)
    m.update_batch([s.encode("utf-8") for s in shingles(text, lang, cfg.ngram)])
    return m.hashvalues


def band_keys(sig: np.ndarray, lang: str, cfg: MinHashConfig) -> list[str]:
    """One LSH bucket key per band; documents of different languages never share a bucket."""
    return [f"{lang}:{b}:" + hashlib.blake2b(sig[b * cfg.rows:(b + 1) * cfg.rows].tobytes(),
                                            digest_size=12).hexdigest()
            for b in range(cfg.bands)]


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
