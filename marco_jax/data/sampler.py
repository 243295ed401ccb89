"""An index-addressable mixture stream: example j of the mixture is a pure function of (seed, j).

Stratified sampling in blocks of about `block_size` examples. Task t (probability p_t) gets
`m_t = floor(M p_t)` examples in every block plus one extra in a fraction `f_t = M p_t - m_t` of
the blocks, placed by a seeded low-discrepancy rule, so the number of task-t examples in the first
b blocks has the closed form

    C_t(b) = b * m_t + floor(b * f_t + phi_t)        (phi_t in [0, 1) seeded per task)

and |realised - expected| < 1 example per task at every block boundary. The order inside a block
is a seeded permutation. Example j therefore maps, without any state, to (task t, k = the task's
k-th example); document `k` of a task walks the task's documents epoch by epoch, each epoch in a
fresh seeded order (a keyed Feistel permutation, O(1) memory and time per lookup), so documents
repeat only after the whole task has been seen.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Sequence

import numpy as np

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from any tuple of values (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a fast, well-distributed 64-bit hash."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def permute_index(i: int, n: int, key: int, rounds: int = 4) -> int:
    """Position of i under a keyed pseudo-random permutation of range(n).

    A balanced Feistel network on the smallest even-bit domain >= n, cycle-walked back into
    [0, n) (a bijection of [0, n) because the network is a bijection of the larger domain).
    """
    if not 0 <= i < n:
        raise ValueError(f"index {i} outside [0, {n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(rounds):
            left, right = right, left ^ (_mix64((key << 8 | r) ^ (right * 0x9E3779B97F4A7C15)
                                                & _MASK64) & mask)
        x = left << half | right
        if x < n:
            return x


def document_index(seed: int, task: str, k: int, num_documents: int) -> int:
    """The document read for the task's k-th example: epoch k // N, seeded order per epoch."""
    if num_documents <= 0:
        raise ValueError(f"task {task!r} has no documents")
    epoch, pos = divmod(int(k), num_documents)
    return permute_index(pos, num_documents, derive_seed(seed, task, epoch))


class MixtureSampler:
    """Maps global example indices to (task index, task-local index), stratified by block."""

    def __init__(self, probabilities: Sequence[float], seed: int, block_size: int = 4096,
                 cache_blocks: int = 512):
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0 or np.any(p < 0) or not math.isclose(p.sum(), 1.0,
                                                                           rel_tol=1e-9):
            raise ValueError(f"probabilities must be a non-empty 1-D vector >= 0 summing to 1, "
                             f"got {p.tolist()}")
        if block_size < len(p):
            raise ValueError(f"block_size {block_size} < number of tasks {len(p)}")
        self.probabilities = p
        self.seed = int(seed)
        expected = block_size * p
        self._m = np.floor(expected).astype(np.int64)
        self._f = expected - self._m
        self._phi = np.asarray([derive_seed(seed, "phi", t) / 2**32 for t in range(len(p))])
        self._block_size = block_size
        self._cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray, int]] = (
            collections.OrderedDict()
        )
        self._cache_blocks = cache_blocks
        self._last: tuple[int, int, int] = (-1, 0, 0)  # (block, start, stop) of the last lookup

    @property
    def num_tasks(self) -> int:
        return len(self.probabilities)

    def cumulative_counts(self, b: int) -> np.ndarray:
        """C_t(b): examples of each task in blocks [0, b)."""
        return b * self._m + np.floor(b * self._f + self._phi).astype(np.int64)

    def _block_start(self, b: int) -> int:
        return int(self.cumulative_counts(b).sum())

    def _find_block(self, j: int) -> int:
        slack = self.num_tasks + 1
        lo = max(0, (j - slack) // self._block_size - 1)
        hi = (j + slack) // self._block_size + 2  # _block_start(hi) > j
        while hi - lo > 1:  # invariant: start(lo) <= j < start(hi)
            mid = (lo + hi) // 2
            if self._block_start(mid) <= j:
                lo = mid
            else:
                hi = mid
        return lo

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray, int]:
        hit = self._cache.get(b)
        if hit is not None:
            self._cache.move_to_end(b)
            return hit
        before = self.cumulative_counts(b)
        counts = self.cumulative_counts(b + 1) - before
        labels = np.repeat(np.arange(self.num_tasks), counts)
        offsets = np.repeat(before - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        shuffled = labels[np.random.default_rng([self.seed, b, 0x5EED]).permutation(len(labels))]
        # Task-local indices in order of appearance: the stable sort of the shuffled labels
        # lists each task's positions in order, and the sorted labels equal `labels`.
        local = np.empty(len(labels), dtype=np.int64)
        local[np.argsort(shuffled, kind="stable")] = offsets + np.arange(len(labels))
        entry = (shuffled, local, self._block_start(b))
        self._cache[b] = entry
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return entry

    def lookup(self, j: int) -> tuple[int, int]:
        """(task index, task-local example index) of global example j."""
        if j < 0:
            raise ValueError(f"example index must be >= 0, got {j}")
        b, start, stop = self._last
        if not start <= j < stop:
            b = self._find_block(j)
            start = self._block(b)[2]
            self._last = (b, start, start + len(self._block(b)[0]))
        labels, local, _ = self._block(b)
        return int(labels[j - start]), int(local[j - start])

    def task_counts(self, start: int, stop: int) -> np.ndarray:
        """How many of the examples [start, stop) each task gets (for share checks)."""
        out = np.zeros(self.num_tasks, dtype=np.int64)
        j = start
        while j < stop:
            b = self._find_block(j)
            labels, _, block_start = self._block(b)
            end = min(stop, block_start + len(labels))
            out += np.bincount(labels[j - block_start:end - block_start],
                               minlength=self.num_tasks)
            j = end
        return out

    def global_index(self, t: int, k: int) -> int:
        """The global example index j with lookup(j) == (t, k): the inverse of `lookup`."""
        if k < 0 or not self.probabilities[t] > 0:
            raise ValueError(f"task {t} (probability {self.probabilities[t]}) has no example {k}")
        lo, hi = 0, 1
        while self.cumulative_counts(hi)[t] <= k:  # C_t(hi) > k ends the doubling
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # invariant: C_t(lo) <= k < C_t(hi)
            mid = (lo + hi) // 2
            if self.cumulative_counts(mid)[t] <= k:
                lo = mid
            else:
                hi = mid
        labels, _, start = self._block(lo)
        offset = k - int(self.cumulative_counts(lo)[t])
        return start + int(np.flatnonzero(labels == t)[offset])
