"""The training input iterator: mixture -> documents -> packed rows -> this host's batch rows.

The global stream is a pure function of the config and the seed: global example j is
(task, document) by `MixtureSampler`; global row r of every step is packed by lane r from
examples j = r, r + B, r + 2B, ... (`packing.Lane`). Host h of n computes only the rows
[h B / n, (h + 1) B / n). The iterator's state is the step plus every lane's (next example,
pending documents), so a restored run -- on any number of hosts -- continues with exactly the
batches the uninterrupted run would have produced, with no example duplicated or skipped.

On a real multi-host run `get_state()` all-gathers the lanes (a collective: every host calls it
at the same step, as checkpointing does); simulated hosts (tests) return their own lanes and
`merge_states` combines them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from marco_jax.data import mixtures as M
from marco_jax.data.packing import Lane, PackingCounters, empty_rows
from marco_jax.data.sampler import MixtureSampler, derive_seed, document_index
from marco_jax.data.tasks import Document, TaskSpec, task_catalog

STATE_FORMAT = "marco_jax.input/1"


@dataclasses.dataclass
class MixturePlan:
    """Everything the sampler needs, and what `inspect` prints."""

    name: str
    tasks: list[TaskSpec]
    groups: dict[str, str]  # task -> group
    group_shares: dict[str, float]
    pools: dict[str, float]  # tokens per task used in the temperature formula
    pool_origin: dict[str, str]  # task -> "paper" | "stats" | "estimated"
    mean_tokens: dict[str, float]  # tokens per document (EOS included)
    token_rates: dict[str, float]
    probabilities: dict[str, float]
    temperature: float
    missing: list[str]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def fingerprint(self) -> str:
        """Identifies the example stream: resuming with a different mixture is refused."""
        payload = json.dumps([[n, round(self.probabilities[n], 12)] for n in self.names])
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def measure_task(task: TaskSpec, sample_docs: int) -> tuple[float, float, str]:
    """(total tokens, mean tokens per document, origin) from stats or a tokenized sample."""
    stats = task.stats()
    n_docs = len(task.source)
    if stats is not None and stats.get("documents"):
        return stats["tokens"], stats["tokens"] / stats["documents"], "stats"
    k = min(n_docs, sample_docs)
    idx = np.unique(np.linspace(0, n_docs - 1, k).round().astype(np.int64))
    lengths = [len(task.document(task.source[int(i)], f"{task.name}[{i}]").tokens) for i in idx]
    mean = float(np.mean(lengths))
    if stats is not None:  # tokens known, documents not
        return stats["tokens"], mean, "stats"
    return mean * n_docs, mean, "estimated"


def plan_mixture(data: Any) -> MixturePlan:
    """Resolves `config.data` into tasks, pools and rates (see `mixtures` for the formula)."""
    spec = M.get_mixture(data.mixture, _get(data, "shares", None))
    temperature = float(data.temperature)
    catalog = task_catalog(_get(data, "sources_dir", ""), _get(data, "task_sources", None))
    spec = spec.expand(list(catalog))
    wanted = spec.tasks
    missing = [t for t in wanted if t not in catalog]
    if missing and not spec.skip_missing:
        raise FileNotFoundError(
            f"mixture {spec.name!r}: no source for {len(missing)} task(s) {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''} under sources_dir="
            f"{_get(data, 'sources_dir', '') or '<package sample corpus>'}; set "
            f"config.data.sources_dir or config.data.task_sources")
    tasks = [catalog[t] for t in wanted if t in catalog]
    pool_mode = _get(data, "pool_sizes", "") or spec.pool_sizes
    sample_docs = int(_get(data, "estimate_docs", 64))
    pools, origin, mean_tokens = {}, {}, {}
    for t in tasks:
        total, mean, how = measure_task(t, sample_docs)
        mean_tokens[t.name] = mean
        if pool_mode == "paper":
            pools[t.name], origin[t.name] = M.paper_pool_tokens(t.name), "paper"
        elif pool_mode == "sources":
            pools[t.name], origin[t.name] = total, how
        else:
            raise ValueError(f"config.data.pool_sizes={pool_mode!r}, expected 'paper' or "
                             f"'sources'")
    rates = M.task_rates(spec, temperature, pools)
    probs = M.example_probabilities(rates, mean_tokens)
    return MixturePlan(
        name=spec.name, tasks=tasks, groups={t.name: spec.group_of(t.name) for t in tasks},
        group_shares=_group_sums(rates, spec), pools=pools,
        pool_origin=origin, mean_tokens=mean_tokens, token_rates=rates, probabilities=probs,
        temperature=temperature, missing=missing)


def _group_sums(rates: Mapping[str, float], spec: M.MixtureSpec) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, r in rates.items():
        out[spec.group_of(t)] = out.get(spec.group_of(t), 0.0) + r
    return out


def _get(section: Any, key: str, default: Any) -> Any:
    value = section.get(key, default) if hasattr(section, "get") else getattr(
        section, key, default)
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return value


class TrainIterator:
    """Deterministic, host-sharded, checkpointable iterator of packed batches (numpy int32)."""

    def __init__(self, plan: MixturePlan, *, seed: int, global_batch_size: int, seq_len: int,
                 process_index: int = 0, process_count: int = 1, lookahead: int = 8,
                 block_size: int = 4096, split: str = "train", eval_fraction: float = 0.0):
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
        self.plan, self.seed = plan, int(seed)
        self.split, self.eval_fraction = split, float(eval_fraction)
        # Held-out documents: the last ceil(f * N) of every task (at least one document stays
        # in training); training reads the rest. Eval draws with its own seed.
        self._doc_ranges = []
        for task in plan.tasks:
            n = len(task.source)
            held = min(n - 1, math.ceil(eval_fraction * n)) if eval_fraction > 0 else 0
            if split == "eval" and held == 0:
                raise ValueError(f"task {task.name!r} has {n} document(s): nothing to hold out")
            self._doc_ranges.append((0, n - held) if split == "train" else (n - held, held))
        if split == "eval":
            seed = derive_seed(seed, "eval")
        self.global_batch_size, self.seq_len = global_batch_size, seq_len
        self.process_index, self.process_count = process_index, process_count
        self.lookahead = lookahead
        self.source_names: list[str] = plan.names
        self.sampler = MixtureSampler([plan.probabilities[n] for n in plan.names], seed,
                                      block_size)
        self.counters = PackingCounters()
        per_host = global_batch_size // process_count
        self.rows = range(process_index * per_host, (process_index + 1) * per_host)
        self.lanes = [Lane(r, global_batch_size, seq_len, self._fetch, lookahead, self.counters)
                      for r in self.rows]
        self.step = 0

    # -- documents ----------------------------------------------------------------------------
    def example(self, j: int) -> tuple[int, int]:
        """(task index, document index) of global example j."""
        t, k = self.sampler.lookup(j)
        first, count = self._doc_ranges[t]
        return t, first + document_index(self.seed, self.plan.tasks[t].name, k, count)

    def _fetch(self, j: int) -> tuple[int, Document]:
        t, d = self.example(j)
        task = self.plan.tasks[t]
        return t, task.document(task.source[d], f"{task.name} document {d}")

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
                "eval_fraction": self.eval_fraction, "step": self.step}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position. Global (all lanes) when jax runs this many processes."""
        lanes = {str(r): lane.get_state() for r, lane in zip(self.rows, self.lanes, strict=True)}
        if self.process_count > 1 and _jax_process_count() == self.process_count:
            lanes = _allgather_lanes(lanes, self.global_batch_size, self.lookahead)
        return {**self._header(), "lanes": lanes}

    def set_state(self, state: Mapping[str, Any]) -> None:
        expect = self._header()
        for key in ("format", "mixture", "fingerprint", "seed", "global_batch_size", "seq_len",
                    "lookahead", "split", "eval_fraction"):
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


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One global state from per-host states of the same step (simulated or gathered hosts)."""
    if not states:
        raise ValueError("merge_states needs at least one state")
    head = {k: v for k, v in states[0].items() if k != "lanes"}
    lanes: dict[str, Any] = {}
    for s in states:
        other = {k: v for k, v in s.items() if k != "lanes"}
        if other != head:
            raise ValueError(f"cannot merge input states from different steps/configs: {head} "
                             f"vs {other}")
        lanes.update(s["lanes"])
    return {**head, "lanes": lanes}


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


def make_train_iterator(config: Any, process_index: int | None = None,
                        process_count: int | None = None, split: str = "train") -> TrainIterator:
    """The training iterator for `config.data` (defaults: this jax process of all of them).

    Reads data.{mixture, shares, temperature, sources_dir, task_sources, pool_sizes, seq_len,
    global_batch_size, seed, packing_lookahead, sampler_block_size, eval_fraction}.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    data = config.data
    plan = plan_mixture(data)
    return TrainIterator(
        plan, seed=int(data.seed), global_batch_size=int(data.global_batch_size),
        seq_len=int(data.seq_len), process_index=process_index, process_count=process_count,
        lookahead=int(_get(data, "packing_lookahead", 8)),
        block_size=int(_get(data, "sampler_block_size", 4096)), split=split,
        eval_fraction=float(_get(data, "eval_fraction", 0.0)))


def make_eval_iterator(config: Any, process_index: int | None = None,
                       process_count: int | None = None) -> TrainIterator:
    """The same mixture over the held-out documents (data.eval_fraction of every task)."""
    return make_train_iterator(config, process_index, process_count, split="eval")


def realised_shares(counts: Mapping[str, float], plan: MixturePlan) -> tuple[dict, dict]:
    """(per group, per task) fractions of `counts` (task -> examples or tokens)."""
    total = sum(counts.values()) or 1
    by_task = {t: counts.get(t, 0) / total for t in plan.names}
    by_group: dict[str, float] = {}
    for t, v in by_task.items():
        by_group[plan.groups[t]] = by_group.get(plan.groups[t], 0.0) + v
    return by_group, by_task


