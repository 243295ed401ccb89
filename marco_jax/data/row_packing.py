"""Packing whole units of sequences (an SFT conversation; a DPO pair's chosen + rejected) into
fixed-length rows with segment ids, for in-memory post-training sets.

Every sequence of a unit goes into the same row (a DPO pair's two log-probs then meet inside one
row, so neither gradient accumulation nor data sharding, which both split by rows, can separate
them). Placement is first-fit in the given order over the rows opened so far, with at most
`max_units_per_row` units per row; callers shuffle units before packing for a new epoch.

A sequence of n tokens fills n - 1 slots: inputs ids[:-1], targets ids[1:], `loss_mask` its
target mask; `segment_ids` number the row's sequences 1, 2, ... (0 = padding) and `positions`
restart at 0 for each, so attention never crosses a sequence and packed equals unpacked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

TOKEN_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PackedSequence:
    ids: np.ndarray  # [n] int32
    target_mask: np.ndarray  # [n - 1] uint8/bool: which targets the loss or log-prob counts

    def __post_init__(self):
        if len(self.target_mask) != len(self.ids) - 1 or len(self.ids) < 2:
            raise ValueError(f"a sequence needs >= 2 tokens and len(ids) - 1 target-mask "
                             f"entries; got {len(self.ids)} ids, {len(self.target_mask)} mask")

    @property
    def slots(self) -> int:
        return len(self.ids) - 1


def assign_rows(unit_slots: Sequence[int], seq_len: int, max_units_per_row: int = 0
                ) -> list[list[int]]:
    """First-fit: unit indices per row. unit_slots[i] is unit i's total slots (<= seq_len)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, need in enumerate(unit_slots):
        if need > seq_len:
            raise ValueError(f"unit {i} needs {need} slots > seq_len {seq_len}")
        for r in range(len(rows)):
            if room[r] >= need and not (max_units_per_row and len(rows[r]) >= max_units_per_row):
                rows[r].append(i)
                room[r] -= need
                break
        else:
            rows.append([i])
            room.append(seq_len - need)
    return rows


def empty_token_rows(n: int, seq_len: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((n, seq_len), np.int32) for k in TOKEN_FIELDS}


def write_sequence(rows: dict[str, np.ndarray], r: int, start: int, segment: int,
                   seq: PackedSequence) -> int:
    """Writes `seq` at rows[*][r, start:] as segment `segment`; returns the next free slot."""
    n = seq.slots
    sl = slice(start, start + n)
    rows["tokens"][r, sl] = seq.ids[:-1]
    rows["targets"][r, sl] = seq.ids[1:]
    rows["positions"][r, sl] = np.arange(n, dtype=np.int32)
    rows["segment_ids"][r, sl] = segment
    rows["loss_mask"][r, sl] = seq.target_mask
    return start + n


def pad_rows(rows: dict[str, np.ndarray], multiple: int, fill: dict[str, int] | None = None
             ) -> dict[str, np.ndarray]:
    """Appends all-padding rows so the row count is a multiple of `multiple` (a global batch).
    `fill` gives the padding value of fields whose "none" is not 0 (e.g. -1 language ids)."""
    n = len(next(iter(rows.values())))
    extra = -n % multiple
    if not extra:
        return rows
    out = {}
    for k, v in rows.items():
        pad = np.full((extra, *v.shape[1:]), (fill or {}).get(k, 0), v.dtype)
        out[k] = np.concatenate([v, pad])
    return out


def batches(rows: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive global batches of `batch_size` rows (rows padded to a multiple first)."""
    n = len(next(iter(rows.values())))
    if n % batch_size:
        raise ValueError(f"{n} rows are not a multiple of batch_size {batch_size}; pad_rows first")
    return [{k: v[i:i + batch_size] for k, v in rows.items()} for i in range(0, n, batch_size)]
