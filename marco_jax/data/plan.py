"""Mixture plans: which tasks, with which example probabilities, and why (what `inspect` prints).

`plan_mixture` resolves one of our mixtures (`mixtures.MIXTURES`) over the task catalog: pools,
temperature rates, mean tokens per document. Plans over seqio Tasks/Mixtures that are not ours
are built by `seqio_feed.plan_seqio`; `pipeline.resolve_plan` chooses between them.

Tasks left out, each logged and listed in the plan: `missing` (no source at all; only where the
mixture says `skip_missing`) and `empty` (a source with zero records, e.g. a language that kept
no documents in data_pipelines' output; allowed whenever its group keeps another task).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from marco_jax.config import ConfigError, to_experiment
from marco_jax.config.schema import DataSection, Experiment
from marco_jax.data import mixtures as M
from marco_jax.data.sources import exists, read_bytes
from marco_jax.data.tasks import TaskSpec, task_catalog

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MixturePlan:
    """Everything the sampler needs, and what `inspect` prints.

    `tasks` are our `TaskSpec`s (index-addressable) or `seqio_feed.SeqioTask`s (streams).
    """

    name: str
    tasks: list[Any]
    groups: dict[str, str]  # task -> group
    group_shares: dict[str, float]
    pools: dict[str, float]  # tokens per task used in the temperature formula
    pool_origin: dict[str, str]  # task -> "paper" | "stats" | "estimated" | "seqio rate"
    mean_tokens: dict[str, float]  # tokens per document (EOS included)
    token_rates: dict[str, float]
    probabilities: dict[str, float]
    temperature: float
    missing: list[str]
    empty: list[str] = dataclasses.field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def fingerprint(self) -> str:
        """Identifies the example stream: resuming with a different mixture is refused."""
        payload = json.dumps([[n, round(self.probabilities[n], 12)] for n in self.names])
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def data_section(config: Any) -> DataSection:
    """The typed data section of an Experiment, a DataSection, or a ConfigDict/dict of either."""
    if isinstance(config, DataSection):
        return config
    if isinstance(config, Experiment):
        return config.data
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return to_experiment(tree if "data" in tree else {"data": tree}).data


def import_modules(data: DataSection) -> None:
    """Imports `data.modules` (a user's seqio Task/Mixture registrations); one line on failure."""
    for name in data.modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure of user code is a bad-config line, not a traceback
            raise ConfigError(f"data.modules: importing {name!r} failed: "
                              f"{type(e).__name__}: {e}") from None


def measure_task(task: TaskSpec, sample_docs: int) -> tuple[float, float, str]:
    """(total tokens, mean tokens per document, origin) from stats or a tokenized sample."""
    stats = task.stats()
    n_docs = len(task.source)
    if stats is not None and stats.get("documents"):
        return stats["tokens"], stats["tokens"] / stats["documents"], "stats"
    k = min(n_docs, sample_docs)
    idx = np.unique(np.linspace(0, n_docs - 1, k).round().astype(np.int64))
    lengths = []
    for i in idx:
        try:
            lengths.append(len(task.document(task.source[int(i)],
                                             task.source.locate(int(i))).tokens))
        except ValueError:  # a bad record: the iterator applies data.on_bad_record to it
            continue
    if not lengths:
        raise ValueError(f"task {task.name}: none of the {len(idx)} sampled records of "
                         f"{task.pattern!r} could be read")
    mean = float(np.mean(lengths))
    if stats is not None:  # tokens known, documents not
        return stats["tokens"], mean, "stats"
    return mean * n_docs, mean, "estimated"


def plan_mixture(config: Any) -> MixturePlan:
    """Resolves one of our mixtures (`data.mixture` in `mixtures.MIXTURES`) into tasks, pools and
    rates (see `mixtures` for the formula). Accepts a DataSection, Experiment or ConfigDict."""
    data = data_section(config)
    spec = M.get_mixture(data.mixture, data.shares or None)
    catalog = task_catalog(data.sources_dir, data.task_sources or None)
    spec = spec.expand(list(catalog))
    wanted = spec.tasks
    kept_none = _kept_no_documents(data.sources_dir, [t for t in wanted if t not in catalog])
    missing = [t for t in wanted if t not in catalog and t not in kept_none]
    if missing and not spec.skip_missing:
        raise FileNotFoundError(
            f"mixture {spec.name!r}: no source for {len(missing)} task(s) {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''} under sources_dir="
            f"{data.sources_dir or '<package sample corpus>'}; set "
            f"config.data.sources_dir or config.data.task_sources")
    for t in missing:
        log.info("mixture %s: task %s has no source; left out", spec.name, t)
    present = [catalog[t] for t in wanted if t in catalog]
    empty = [t.name for t in present if len(t.source) == 0]
    for t in empty:
        log.warning("mixture %s: task %s has zero records (%s); left out", spec.name, t,
                    catalog[t].pattern)
    for t in kept_none:
        log.warning("mixture %s: task %s kept no documents (web/stats.json); left out",
                    spec.name, t)
    empty += kept_none
    tasks = [t for t in present if t.name not in empty]
    pool_mode = data.pool_sizes or spec.pool_sizes
    pools, origin, mean_tokens = {}, {}, {}
    for t in tasks:
        total, mean, how = measure_task(t, data.estimate_docs)
        mean_tokens[t.name] = mean
        if pool_mode == "paper":
            pools[t.name], origin[t.name] = M.paper_pool_tokens(t.name), "paper"
        else:
            pools[t.name], origin[t.name] = total, how
    rates = M.task_rates(spec, data.temperature, pools, tuple(empty))
    probs = M.example_probabilities(rates, mean_tokens)
    return MixturePlan(
        name=spec.name, tasks=tasks, groups={t.name: spec.group_of(t.name) for t in tasks},
        group_shares=_group_sums(rates, spec), pools=pools,
        pool_origin=origin, mean_tokens=mean_tokens, token_rates=rates, probabilities=probs,
        temperature=data.temperature, missing=missing, empty=empty)


def _kept_no_documents(root: str, tasks: list[str]) -> list[str]:
    """Web tasks without shards that data_pipelines' `<root>/web/stats.json` shows kept no
    documents (it writes no shard for such a language): zero records, not a missing source."""
    web = [t for t in tasks if t.startswith("web.")]
    if not web or not root:
        return []
    path = f"{root.rstrip('/')}/web/stats.json"
    if not exists(path):
        return []
    try:
        by_lang = json.loads(read_bytes(path)).get("by_language") or {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid stats JSON ({e.msg})") from None
    def kept(entry: Any) -> bool:
        if isinstance(entry, dict):
            return bool(entry.get("documents", entry.get("tokens")))
        return bool(entry)  # a bare token count

    return [t for t in web if not kept(by_lang.get(t.removeprefix("web.")))]


def _group_sums(rates: Mapping[str, float], spec: M.MixtureSpec) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, r in rates.items():
        out[spec.group_of(t)] = out.get(spec.group_of(t), 0.0) + r
    return out
