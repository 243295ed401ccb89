"""The training input iterator: mixture -> documents -> packed rows -> this host's batch rows.

The global stream is a pure function of the config and the seed: global example j is
(task, k = the task's k-th example) by `MixtureSampler`; global row r of every step is packed by
lane r from examples j = r, r + B, r + 2B, ... (`packing.Lane`). Host h of n computes only the
rows [h B / n, (h + 1) B / n). The iterator's state is the step plus every lane's (next example,
pending documents), so a restored run continues with exactly the batches the uninterrupted run
would have produced, with no example duplicated or skipped.

Resume guarantees, by kind of task:
- our tasks (`tasks.TaskSpec`: web/bitext/knowledge/synthetic/sft shards): example k is document
  `document_index(seed, task, k, N)` read by index, so a restore is O(1) and exact on ANY
  number of hosts;
- a seqio Task that is not ours (`seqio_feed.SeqioTask`: TFDS/function sources, arbitrary
  preprocessors): example k is the k-th example of the task's stream (epoch after epoch), so a
  restore is exact -- on any number of hosts too -- when that stream is deterministic
  (seqio shuffle=False and a fixed seed, which we pass, and no nondeterministic preprocessor),
  by REPLAY: the stream is re-read from its start up to the position needed, a cost
  proportional to that position (every host reads the whole stream of such a task).

Bad records (`data.on_bad_record`): "error" raises naming file, record and problem; "skip"
replaces a bad document of our tasks by the next good document of the same task (a pure function
of the index, so the stream and resume stay exact) and counts it per task and reason:
`bad_records()`, and `get_state()["bad_records"]` (summed over hosts, survives restores).

On a real multi-host run `get_state()` all-gathers the lanes and the counts (a collective: every
host calls it at the same step, as checkpointing does); simulated hosts (tests) return their own
lanes and `merge_states` combines them.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from marco_jax.config import ConfigError
from marco_jax.data import mixtures as M
from marco_jax.data.packing import Lane, PackingCounters, empty_rows
from marco_jax.data.plan import MixturePlan, data_section
from marco_jax.data.plan import plan_mixture as plan_our_mixture
from marco_jax.data.prefetch import Prefetcher
from marco_jax.data.sampler import MixtureSampler, derive_seed, document_index
from marco_jax.data.sources import REASONS, BadRecord
from marco_jax.data.tasks import Document, task_catalog

STATE_FORMAT = "marco_jax.input/2"
log = logging.getLogger(__name__)


def resolve_plan(config: Any) -> MixturePlan:
    """The plan for `data.mixture`: one of our mixtures, or any registered seqio Task/Mixture
    (a user's included, registered by `data.modules`). Our mixtures are also registered as seqio
    Mixtures whenever seqio is loaded in this process (a seqio user has imported it; a run that
    never touches seqio does not pay TensorFlow's import)."""
    data = data_section(config)
    if data.mixture in M.MIXTURES and not data.modules and "seqio" not in sys.modules:
        return plan_our_mixture(data)
    if not data.modules and data.mixture not in M.MIXTURES and "seqio" not in sys.modules and \
            data.mixture not in task_catalog(data.sources_dir, data.task_sources or None):
        raise ConfigError(f"data.mixture={data.mixture!r}: neither one of our mixtures "
                          f"({', '.join(sorted(M.MIXTURES))}), nor one of our tasks, nor a "
                          "registered seqio Task or Mixture (register yours in a module named "
                          "by data.modules)")
    from marco_jax.data import seqio_feed  # lazy: imports TensorFlow (~10 s)

    return seqio_feed.plan_seqio(data)


plan_mixture = resolve_plan


class TrainIterator:
    """Deterministic, host-sharded, checkpointable iterator of packed batches (numpy int32)."""

    def __init__(self, plan: MixturePlan, *, seed: int, global_batch_size: int, seq_len: int,
                 process_index: int = 0, process_count: int = 1, lookahead: int = 8,
                 block_size: int = 4096, split: str = "train", eval_fraction: float = 0.0,
                 on_bad_record: str = "error"):
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                             f"process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}, expected 'train' or 'eval'")
        if split == "eval" and eval_fraction <= 0:
            raise ValueError("an eval iterator needs held-out documents: set "
                             "config.data.eval_fraction > 0 (e.g. 0.01)")
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record={on_bad_record!r}, expected 'error' or 'skip'")
        self.plan, self.seed = plan, int(seed)
        self.split, self.eval_fraction = split, float(eval_fraction)
        self.on_bad_record = on_bad_record
        probabilities = [plan.probabilities[n] for n in plan.names]
        # Held-out documents: the last ceil(f * N) of every task of ours (at least one document
        # stays in training); training reads the rest. Eval draws with its own seed. Streamed
        # seqio tasks have no held-out part: eval leaves them out (probability 0).
        self._doc_ranges: list[tuple[int, int]] = []
        for t, task in enumerate(plan.tasks):
            if _is_stream(task):
                self._doc_ranges.append((0, 0))
                if split == "eval":
                    log.info("eval iterator: seqio task %s is a stream without held-out "
                             "examples; left out of eval", task.name)
                    probabilities[t] = 0.0
                continue
            n = len(task.source)
            held = min(n - 1, math.ceil(eval_fraction * n)) if eval_fraction > 0 else 0
            if split == "eval" and held == 0:
                raise ValueError(f"task {task.name!r} has {n} document(s): nothing to hold out")
            self._doc_ranges.append((0, n - held) if split == "train" else (n - held, held))
        if split == "eval":
            seed = derive_seed(seed, "eval")
            if not sum(probabilities) > 0:
                raise ValueError("no task of this mixture has held-out documents for eval")
            probabilities = [p / sum(probabilities) for p in probabilities]
        self.global_batch_size, self.seq_len = global_batch_size, seq_len
        self.process_index, self.process_count = process_index, process_count
        self.lookahead = lookahead
        self.source_names: list[str] = plan.names
        self.sampler = MixtureSampler(probabilities, seed, block_size)
        self.counters = PackingCounters()
        per_host = global_batch_size // process_count
        self.rows = range(process_index * per_host, (process_index + 1) * per_host)
        self.lanes = [Lane(r, global_batch_size, seq_len, self._fetch, lookahead, self.counters)
                      for r in self.rows]
        self._streams = {t: task.open_stream(self._wanted(t))
                         for t, task in enumerate(plan.tasks) if _is_stream(task)}
        self._bad_docs: dict[int, dict[int, BadRecord]] = {}  # task -> document -> why
        self._bad_new: Counter = Counter()  # (task name, reason) -> replacements since start
        self._bad_base: Counter = Counter()  # restored counts (host 0 carries the global sum)
        self.step = 0

    # -- documents ----------------------------------------------------------------------------
    def example(self, j: int) -> tuple[int, int]:
        """(task index, document index) of global example j (streams: the stream position)."""
        t, k = self.sampler.lookup(j)
        if _is_stream(self.plan.tasks[t]):
            return t, k
        first, count = self._doc_ranges[t]
        return t, first + document_index(self.seed, self.plan.tasks[t].name, k, count)

    def _fetch(self, j: int, fresh: bool = True) -> tuple[int, Document]:
        t, d = self.example(j)
        if t in self._streams:
            return t, self._streams[t].get(d)
        doc, bad = self._read_document(t, d)
        if fresh:  # a new example (not a document in flight re-read after a restore)
            for reason in bad:
                self._bad_new[(self.plan.tasks[t].name, reason)] += 1
        return t, doc

    def _read_document(self, t: int, d: int) -> tuple[Document, list[str]]:
        """Document d of task t, or under "skip" the next good one of the task's range (wrapping):
        a pure function of (t, d). Also the reasons of the bad documents passed over."""
        task, (first, count) = self.plan.tasks[t], self._doc_ranges[t]
        known_bad = self._bad_docs.setdefault(t, {})
        reasons = []
        for step in range(count):
            dd = first + (d - first + step) % count
            if dd in known_bad:
                reasons.append(known_bad[dd].reason)
                continue
            where = task.source.locate(dd)
            try:
                return task.document(task.source[dd], where), reasons
            except BadRecord as e:
                bad = e
            except ValueError as e:  # the record decoded but is not a valid document
                bad = BadRecord(where, "bad_fields", str(e).removeprefix(f"{where}: "))
            if self.on_bad_record == "error":
                raise ValueError(f"{bad} (task {task.name}; set data.on_bad_record=skip to "
                                 "replace bad records and count them)") from None
            log.warning("bad record skipped (task %s, %s): %s", task.name, bad.reason, bad)
            known_bad[dd] = bad
            reasons.append(bad.reason)
        raise ValueError(f"task {task.name}: all {count} records of {task.pattern!r} in this "
                         f"split are bad (e.g. {next(iter(known_bad.values()))})")

    def _wanted(self, t: int):
        """Whether example k of stream task t will still be read by a lane of this host: streams
        keep those they pass on the way to a requested example (others are dropped)."""
        def wanted(k: int) -> bool:
            j = self.sampler.global_index(t, k)
            r = j % self.global_batch_size
            if r not in self.rows:
                return False
            return j // self.global_batch_size >= self.lanes[r - self.rows.start].next_example
        return wanted

    def bad_records(self) -> dict[str, dict[str, int]]:
        """{task: {reason: bad records replaced}} counted by this host (host 0 also carries the
        restored global count); the global sum is `get_state()["bad_records"]`."""
        return _nest(self._bad_base + self._bad_new)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = empty_rows(len(self.lanes), self.seq_len)
        for k, lane in enumerate(self.lanes):
            lane.fill(rows, k)
        self.step += 1
        return rows

    # -- checkpointing ------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "mixture": self.plan.name,
                "fingerprint": self.plan.fingerprint(), "seed": self.seed,
                "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
                "lookahead": self.lookahead, "split": self.split,
                "eval_fraction": self.eval_fraction}

    def snapshot(self) -> dict[str, Any]:
        """This host's position (no collective): what `state_from` turns into a state. The
        prefetcher takes one after every batch it prepares, in its own thread."""
        return {"step": self.step,
                "lanes": {str(r): lane.get_state()
                          for r, lane in zip(self.rows, self.lanes, strict=True)},
                "bad_records": _nest(self._bad_base + self._bad_new)}

    def state_from(self, snap: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON state of a snapshot: global (all lanes, counts summed over hosts) when jax
        runs this many processes -- a collective, so every host calls it at the same step."""
        lanes, bad = snap["lanes"], snap["bad_records"]
        if self.process_count > 1 and _jax_process_count() == self.process_count:
            lanes = _allgather_lanes(lanes, self.global_batch_size, self.lookahead)
            bad = _allsum_counts(bad, self.plan.names)
        return {**self._header(), "step": snap["step"], "bad_records": bad, "lanes": lanes}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position. Global (all lanes) when jax runs this many processes."""
        return self.state_from(self.snapshot())

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("format") == "marco_jax.input/1":  # before bad-record counts existed
            state = {**state, "format": STATE_FORMAT, "bad_records": {}}
        expect = self._header()
        for key in expect:
            if state.get(key) != expect[key]:
                raise ValueError(f"input state does not match this pipeline: {key}="
                                 f"{state.get(key)!r} in the checkpoint, {expect[key]!r} now "
                                 f"(an exact resume needs the same data config)")
        lanes = state["lanes"]
        absent = [r for r in self.rows if str(r) not in lanes]
        if absent:
            raise ValueError(f"input state lacks lanes {absent[:8]} of this host (rows "
                             f"{self.rows.start}..{self.rows.stop - 1}); merge every host's "
                             f"state with merge_states()")
        for r, lane in zip(self.rows, self.lanes, strict=True):
            lane.set_state(lanes[str(r)])
        self.step = int(state["step"])
        self._bad_new = Counter()
        self._bad_base = Counter({(t, why): n for t, reasons in state["bad_records"].items()
                                  for why, n in reasons.items()} if self.process_index == 0
                                 else {})
        for stream in self._streams.values():
            stream.rewind()
        # Documents in flight, read in global order so every stream is replayed once.
        flight = sorted((lane.global_index(i), lane, i) for lane in self.lanes
                        for i, _ in lane.pending)
        for _, lane, i in flight:
            lane.load_pending(i)


def _is_stream(task: Any) -> bool:
    return hasattr(task, "open_stream")


def _nest(counts: Counter) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (task, reason), n in sorted(counts.items()):
        if n:
            out.setdefault(task, {})[reason] = int(n)
    return out


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One global state from per-host states of the same step (simulated or gathered hosts):
    lanes united, bad-record counts summed."""
    if not states:
        raise ValueError("merge_states needs at least one state")
    own = ("lanes", "bad_records")
    head = {k: v for k, v in states[0].items() if k not in own}
    lanes: dict[str, Any] = {}
    bad: Counter = Counter()
    for s in states:
        other = {k: v for k, v in s.items() if k not in own}
        if other != head:
            raise ValueError(f"cannot merge input states from different steps/configs: {head} "
                             f"vs {other}")
        lanes.update(s["lanes"])
        bad.update({(t, why): n for t, r in s["bad_records"].items() for why, n in r.items()})
    return {**head, "bad_records": _nest(bad), "lanes": lanes}


def _jax_process_count() -> int:
    import jax

    return jax.process_count()


def _allgather_lanes(lanes: dict[str, Any], global_batch: int, lookahead: int) -> dict[str, Any]:
    """Every host's lane states on every host, as a fixed-width int32 array all-gather."""
    from jax.experimental import multihost_utils

    width = 2 + 2 * lookahead  # next, n_pending, then (example, chunk) pairs

    def encode(state: dict) -> list[int]:
        flat = [state["next"], len(state["pending"])] + [v for p in state["pending"] for v in p]
        return flat + [0] * (width - len(flat))

    rows = sorted(lanes, key=int)
    local = np.asarray([[int(r)] + encode(lanes[r]) for r in rows], dtype=np.int64)
    if local.max(initial=0) >= 2**31:
        raise OverflowError("lane state exceeds int32; gather needs a wider encoding")
    gathered = np.asarray(multihost_utils.process_allgather(local.astype(np.int32)))
    out = {}
    for row in gathered.reshape(-1, width + 1).tolist():
        n = row[2]
        out[str(row[0])] = {"next": row[1],
                            "pending": [row[3 + 2 * k:5 + 2 * k] for k in range(n)]}
    if len(out) != global_batch:
        raise RuntimeError(f"gathered {len(out)} lanes, expected {global_batch}")
    return out


def _allsum_counts(bad: Mapping[str, Mapping[str, int]], names: list[str]) -> dict:
    """Bad-record counts summed over hosts ([task, reason] int32 all-gather)."""
    from jax.experimental import multihost_utils

    local = np.zeros((len(names), len(REASONS)), np.int32)
    for t, reasons in bad.items():
        for why, n in reasons.items():
            local[names.index(t), REASONS.index(why)] = n
    total = np.asarray(multihost_utils.process_allgather(local)).reshape(
        -1, len(names), len(REASONS)).sum(0)
    return _nest(Counter({(names[t], REASONS[w]): int(total[t, w])
                          for t, w in zip(*np.nonzero(total), strict=True)}))


def make_train_iterator(config: Any, process_index: int | None = None,
                        process_count: int | None = None, split: str = "train",
                        prefetch: int | None = None):
    """The training iterator for `config.data` (defaults: this jax process of all of them),
    wrapped in a background prefetcher when `data.prefetch` (or `prefetch`) > 0."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    data = data_section(config)
    return iterator_for_plan(resolve_plan(data), data, process_index, process_count, split,
                             prefetch)


def iterator_for_plan(plan: MixturePlan, data: Any, process_index: int = 0,
                      process_count: int = 1, split: str = "train", prefetch: int | None = None):
    """The iterator over an already resolved `plan` with `data`'s settings (prefetch included)."""
    data = data_section(data)
    it = TrainIterator(
        plan, seed=data.seed, global_batch_size=data.global_batch_size,
        seq_len=data.seq_len, process_index=process_index, process_count=process_count,
        lookahead=data.packing_lookahead, block_size=data.sampler_block_size, split=split,
        eval_fraction=data.eval_fraction, on_bad_record=data.on_bad_record)
    ahead = data.prefetch if prefetch is None else prefetch
    return Prefetcher(it, ahead) if ahead > 0 else it


def make_eval_iterator(config: Any, process_index: int | None = None,
                       process_count: int | None = None, prefetch: int | None = None):
    """The same mixture over the held-out documents (data.eval_fraction of every task)."""
    return make_train_iterator(config, process_index, process_count, split="eval",
                               prefetch=prefetch)
