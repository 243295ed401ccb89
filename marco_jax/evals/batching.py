"""Plans fixed-shape batches: lengths rounded up to a few buckets, short sequences packed as
segments of one row, so a whole suite compiles a handful of programs.

Pure Python (no JAX), so every process of a multi-host run computes the same plan on its own.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence


def normalize_buckets(length_buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
    """Sorted unique buckets up to `max_len`, with `max_len` itself always the last one."""
    if max_len < 1:
        raise ValueError(f"max_len={max_len}; expected >= 1")
    bad = [b for b in length_buckets if int(b) < 1]
    if bad:
        raise ValueError(f"length_buckets {list(length_buckets)}: {bad[0]} is not >= 1")
    return tuple(sorted({int(b) for b in length_buckets if b < max_len} | {max_len}))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


@dataclasses.dataclass(frozen=True)
class Batch:
    width: int  # row length (a bucket)
    rows: tuple[tuple[int, ...], ...]  # per row, the indices of the sequences packed in it


def plan_batches(lengths: Sequence[int], *, batch_size: int, buckets: Sequence[int],
                 pack: bool = True) -> list[Batch]:
    """Longest first. A batch's width is the bucket of its longest sequence; a sequence joins
    the batch while its own bucket is at least half that width (packing much shorter sequences
    into wide rows would pay wide-row attention for them), going into the first row with room
    (first-fit decreasing) when `pack`, else into a row of its own. A batch holds at most
    `batch_size` rows; the caller pads the last one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[Batch] = []
    rows: list[list[int]] = []
    room: list[int] = []
    width = 0

    def flush() -> None:
        if rows:
            batches.append(Batch(width, tuple(tuple(r) for r in rows)))
        rows.clear()
        room.clear()

    for i in order:
        n = lengths[i]
        if n < 1:
            raise ValueError(f"sequence {i} has length {n}; expected >= 1")
        own = bucket_for(n, buckets)
        if rows and own < width // 2:
            flush()
        if not rows:
            width = own
        slot = next((r for r, free in enumerate(room) if free >= n), None) if pack else None
        if slot is None:
            if len(rows) == batch_size:
                flush()
                width = own
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= n
    flush()
    return batches
