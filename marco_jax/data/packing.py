"""Packing documents into fixed-length rows with segment ids, positions and a loss mask.

One `Lane` fills one row of the global batch, step after step. Lane r of B reads the global
example stream at j = r, r + B, r + 2B, ... so every example goes to exactly one lane whatever the
number of hosts, and a lane's whole state is two small things: the next lane-local example index
and the documents read but not yet placed (`pending`). Those are what a checkpoint stores.

Placement is first-fit over a short look-ahead: the oldest pending document that fits the room
left goes in next; when none fits and `lookahead` documents are pending, the row is closed and the
rest is padding (segment id 0, loss mask 0). A document is never split across rows unless it
is longer than the row: then it is cut into consecutive chunks of `seq_len` targets (each its own
segment, positions from 0, chunks placed in order) and counted in `chunked_documents`/`chunks`.
Documents with no target (a lone EOS) are counted in `empty_documents` and skipped.

A document of n + 1 tokens gives n (input, target) pairs: inputs tokens[:-1], targets tokens[1:],
so no target ever crosses a document boundary.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np

from marco_jax.data.tasks import Document

FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_mask", "source_ids")


@dataclasses.dataclass
class PackingCounters:
    examples: int = 0
    empty_documents: int = 0
    chunked_documents: int = 0
    chunks: int = 0  # pieces produced from chunked documents
    rows: int = 0
    target_tokens: int = 0
    padding_tokens: int = 0
    tokens_by_task: Counter = dataclasses.field(default_factory=Counter)
    examples_by_task: Counter = dataclasses.field(default_factory=Counter)

    def merge(self, other: PackingCounters) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def empty_rows(n: int, seq_len: int) -> dict[str, np.ndarray]:
    rows = {k: np.zeros((n, seq_len), np.int32) for k in FIELDS}
    rows["source_ids"][:] = -1
    return rows


class Lane:
    """The packed stream of one global batch row. `fetch(j, fresh) -> (task index, Document)`;
    `fresh` is False when a document in flight is re-read after a restore (not a new example)."""

    def __init__(self, lane: int, num_lanes: int, seq_len: int,
                 fetch: Callable[[int, bool], tuple[int, Document]], lookahead: int,
                 counters: PackingCounters):
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        self.lane, self.num_lanes, self.seq_len = lane, num_lanes, seq_len
        self._fetch, self.lookahead, self.counters = fetch, lookahead, counters
        self.next_example = 0
        self.pending: list[list[int]] = []  # [lane-local example, next chunk], oldest first
        self._docs: dict[int, tuple[int, Document]] = {}

    # -- state --------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"next": self.next_example, "pending": [list(p) for p in self.pending]}

    def set_state(self, state: dict) -> None:
        """Documents in flight are re-read (not stored), on first use or by `load_pending`."""
        self.next_example = int(state["next"])
        self.pending = [[int(i), int(c)] for i, c in state["pending"]]
        self._docs = {}

    def global_index(self, i: int) -> int:
        """Global example index of this lane's i-th example."""
        return self.lane + self.num_lanes * i

    def load_pending(self, i: int) -> None:
        if i not in self._docs:
            self._docs[i] = self._fetch(self.global_index(i), False)

    # -- packing ------------------------------------------------------------------------------
    def _num_chunks(self, doc: Document) -> int:
        return -(-(len(doc.tokens) - 1) // self.seq_len)

    def _chunk_len(self, i: int, c: int) -> int:
        self.load_pending(i)
        n = len(self._docs[i][1].tokens) - 1
        return min(self.seq_len, n - c * self.seq_len)

    def _read_next(self) -> None:
        i = self.next_example
        self.next_example += 1
        task, doc = self._fetch(self.global_index(i), True)
        self.counters.examples += 1
        self.counters.examples_by_task[task] += 1
        chunks = self._num_chunks(doc)
        if chunks == 0:
            self.counters.empty_documents += 1
            return
        if chunks > 1:
            self.counters.chunked_documents += 1
            self.counters.chunks += chunks
        self._docs[i] = (task, doc)
        self.pending.append([i, 0])

    def fill(self, rows: dict[str, np.ndarray], r: int) -> None:
        """Writes the lane's next packed row into rows[*][r] (rows come zeroed, source -1)."""
        room, pos, segment = self.seq_len, 0, 0
        while room > 0:
            pick = next((k for k, (i, c) in enumerate(self.pending)
                         if self._chunk_len(i, c) <= room), None)
            if pick is None:
                if len(self.pending) >= self.lookahead:
                    break
                self._read_next()
                continue
            i, c = self.pending[pick]
            task, doc = self._docs[i]
            n = self._chunk_len(i, c)
            lo = c * self.seq_len
            segment += 1
            sl = slice(pos, pos + n)
            rows["tokens"][r, sl] = doc.tokens[lo:lo + n]
            rows["targets"][r, sl] = doc.tokens[lo + 1:lo + n + 1]
            rows["positions"][r, sl] = np.arange(n, dtype=np.int32)
            rows["segment_ids"][r, sl] = segment
            rows["loss_mask"][r, sl] = 1 if doc.target_mask is None else \
                doc.target_mask[lo:lo + n]
            rows["source_ids"][r, sl] = task
            self.counters.tokens_by_task[task] += n
            pos += n
            room -= n
            if c + 1 < self._num_chunks(doc):
                self.pending[pick][1] = c + 1
            else:
                del self.pending[pick]
                del self._docs[i]
        self.counters.rows += 1
        self.counters.target_tokens += pos
        self.counters.padding_tokens += room
