"""Batches for SFT and DPO from in-memory sets: shuffled per epoch, packed, resumable by step.

Post-training sets are small (thousands to a few hundred thousand records), so they are read,
validated and tokenized once (`chat_records` / `preference`), and each epoch is a permutation of
them (a pure function of seed and epoch) packed into rows. Batch `step` is then a pure function
of (seed, step): a restart needs only the step from the checkpoint to continue bit-identically.

Global batch `step` has `global_batch` rows; the last batch of an epoch is filled up with padding
rows (weight 0). Each process takes a contiguous block of rows (`process_rows`), the layout the
batch sharding expects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from marco_jax.data.chat_records import (
    RecordCounters,
    language_index,
    pack_sft_rows,
    read_chat_examples,
)
from marco_jax.data.preference import (
    PAIR_PAD,
    EncodedPair,
    pack_pair_rows,
    read_preference_pairs,
)
from marco_jax.data.row_packing import pad_rows

Rows = dict[str, np.ndarray]


class EpochBatches:
    """`batch(step)` -> the global batch (rows [global_batch, ...]) of that step."""

    def __init__(self, num_units: int, pack: Callable[[np.ndarray], Rows], global_batch: int,
                 seed: int, pad_fill: dict[str, int] | None = None, shuffle: bool = True):
        if num_units <= 0:
            raise ValueError("the data set has no usable records")
        self.num_units, self._pack, self.global_batch = num_units, pack, global_batch
        self.seed, self.pad_fill, self.shuffle = seed, pad_fill or {}, shuffle

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_units)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_units)

    @functools.lru_cache(maxsize=2)  # noqa: B019 (two epochs live at an epoch boundary)
    def epoch_rows(self, epoch: int) -> Rows:
        return pad_rows(self._pack(self.order(epoch)), self.global_batch, self.pad_fill)

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_rows(epoch)["tokens"]) // self.global_batch

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch index in the epoch) of a global step."""
        epoch = 0
        while step >= (n := self.batches_in_epoch(epoch)):
            step -= n
            epoch += 1
        return epoch, step

    def batch(self, step: int) -> Rows:
        epoch, i = self.locate(step)
        lo = i * self.global_batch
        return {k: v[lo:lo + self.global_batch] for k, v in self.epoch_rows(epoch).items()}


def process_rows(batch: Rows, process_index: int, process_count: int) -> Rows:
    """This process's contiguous block of a global batch's rows."""
    n = len(batch["tokens"])
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by {process_count} processes")
    per = n // process_count
    return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


class StepIterator:
    """The training loop's iterator over an `EpochBatches`: `next()` gives this process's rows of
    global batch `step` and advances; the checkpointed state is just {"step": n}, so a restart
    (or a rewound held-out pass) replays exactly."""

    def __init__(self, batches: EpochBatches, process_index: int = 0, process_count: int = 1,
                 counters: dict[str, RecordCounters] | None = None):
        self.batches, self.process_index, self.process_count = batches, process_index, \
            process_count
        self.counters = dict(counters or {})  # source name -> what its reader kept/skipped
        self.step = 0

    def bad_records(self) -> dict[str, dict[str, int]]:
        """{source: {reason: records skipped}} for the run report (every process reads the
        whole set, so these are the global counts)."""
        return {name: dict(c.skipped) for name, c in self.counters.items() if c.skipped}

    def __iter__(self) -> StepIterator:
        return self

    def __next__(self) -> Rows:
        rows = process_rows(self.batches.batch(self.step), self.process_index,
                            self.process_count)
        self.step += 1
        return rows

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def sft_batches(patterns: Sequence[str], languages: Sequence[str], seq_len: int,
                global_batch: int, seed: int = 0, on_bad_record: str = "error",
                truncation: str = "drop_turns") -> tuple[EpochBatches, RecordCounters]:
    """SFT batches (keys of `pack_sft_rows`) over every record of `patterns`."""
    encoded, counters = [], RecordCounters()
    for pattern in patterns:
        examples, c = read_chat_examples(pattern, on_bad_record, seq_len + 1, truncation)
        encoded += [(ids, mask, language_index(e.language, languages))
                    for e, ids, mask in examples]
        _merge(counters, c)
    batches = EpochBatches(len(encoded), lambda order: pack_sft_rows(
        [encoded[i] for i in order], seq_len), global_batch, seed, {"language_ids": -1})
    return batches, counters


def read_dpo_pairs(pattern: str, seq_len: int, on_bad_record: str = "error",
                   truncation: str = "none") -> tuple[list[EncodedPair], RecordCounters]:
    """Every pair of `pattern`, each sequence at most seq_len // 2 + 1 tokens so both sequences
    of a pair always fit one row (n tokens fill n - 1 slots)."""
    return read_preference_pairs(pattern, on_bad_record, seq_len // 2 + 1, truncation)


def dpo_batches(pairs: Sequence[EncodedPair], languages: Sequence[str], seq_len: int,
                pairs_per_row: int, global_batch: int, seed: int = 0,
                ref_logps: np.ndarray | None = None) -> EpochBatches:
    """DPO batches (keys of `pack_pair_rows`). ref_logps: [len(pairs), 2] from
    `marco_jax.train.reference_logps` (dpo.reference="precomputed"), else None."""
    return EpochBatches(len(pairs), lambda order: pack_pair_rows(
        [pairs[i] for i in order], seq_len, pairs_per_row, languages, ref_logps),
        global_batch, seed, PAIR_PAD)


def _merge(into: RecordCounters, other: RecordCounters) -> None:
    into.kept += other.kept
    into.skipped.update(other.skipped)
    into.languages.update(other.languages)
    into.language_sources.update(other.language_sources)
