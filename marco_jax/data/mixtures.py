"""Mixtures: the paper's two CPT stages (and a demo) as data, plus the sampling-rate formula.

A mixture gives each *group* (English, Chinese, other high-resource, low-resource, parallel,
knowledge, synthetic) a share of the training tokens, exactly as the paper's stage table does.
Inside a group the share is spread over the group's tasks (languages / language pairs) by
temperature sampling over their pool sizes:

    rate(task i in group g) = share(g) * n_i ** (1 / T) / sum_{j in g} n_j ** (1 / T)

where n_i is task i's token count (its pool) and T the temperature (`config.data.temperature`):
T = 1 samples proportionally to the pools, T -> inf uniformly over the group's tasks (the paper's
"used" column, 10.6B for every other high-resource language, corresponds to large T).
The rates are *token* shares; the sampler turns them into example probabilities by dividing by
each task's mean tokens per document (see `example_probabilities`).

Any mixture is a config edit: `config.data.mixture` names one of `MIXTURES`, and
`config.data.shares` (group -> share) overrides its group shares.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from marco_jax.data import languages as L

GROUPS: tuple[str, ...] = (
    "english", "chinese", "high_resource", "low_resource", "parallel", "knowledge", "synthetic",
)  # fmt: skip


def web_task(lang: str) -> str:
    return f"web.{lang}"


def bitext_task(src: str, tgt: str) -> str:
    return f"bitext.{src}_{tgt}"


KNOWLEDGE_TASK = "knowledge"
SYNTHETIC_TASK = "synthetic"

# Which tasks make up each group (shared by every CPT mixture).
GROUP_TASKS: dict[str, tuple[str, ...]] = {
    "english": (web_task("en"),),
    "chinese": (web_task("zh"),),
    "high_resource": tuple(web_task(x) for x in L.OTHER_HIGH_RESOURCE),
    "low_resource": tuple(web_task(x) for x in L.LOW_RESOURCE),
    "parallel": tuple(bitext_task(a, b) for a, b in L.BITEXT_PAIRS),
    "knowledge": (KNOWLEDGE_TASK,),
    "synthetic": (SYNTHETIC_TASK,),
}


def paper_pool_tokens(task: str) -> float:
    """Pool size (tokens) of a CPT task per the paper's table (see `languages` for our choices).

    Bitext pairs share the published 103.0B parallel pool equally: the paper gives no per-pair
    sizes, so in "paper" mode the parallel group is uniform over pairs whatever T is.
    """
    if task.startswith("web."):
        return L.POOL_TOKENS_B[task.removeprefix("web.")] * 1e9
    if task.startswith("bitext."):
        return L.PARALLEL_POOL_B * 1e9 / len(L.BITEXT_PAIRS)
    if task == KNOWLEDGE_TASK:
        return L.KNOWLEDGE_POOL_B * 1e9
    if task == SYNTHETIC_TASK:
        return L.SYNTHETIC_POOL_B * 1e9
    raise ValueError(f"no paper pool size for task {task!r}")


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """A named mixture: group shares of tokens, the tasks of each group, where pools come from.

    pool_sizes: "paper" (the paper's pool table, `paper_pool_tokens`) or "sources" (each task's
    token count from its source's stats file, or an estimate when there is none).
    skip_missing: tasks without a source are left out (their group keeps its share; a group
    left with no task is dropped and the other groups are scaled up) instead of raising; only
    for the demo mixture over the small sample corpus.
    """

    name: str
    shares: Mapping[str, float]
    groups: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: dict(GROUP_TASKS)
    )
    pool_sizes: str = "paper"
    skip_missing: bool = False

    def __post_init__(self):
        unknown = sorted(g for g, v in self.shares.items() if g not in self.groups and v > 0)
        if unknown:
            raise ValueError(f"mixture {self.name!r}: shares name unknown groups {unknown}; "
                             f"groups are {sorted(self.groups)}")
        bad = {g: s for g, s in self.shares.items() if not (s >= 0 and math.isfinite(s))}
        if bad:
            raise ValueError(f"mixture {self.name!r}: shares must be finite and >= 0, got {bad}")
        total = sum(self.shares.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mixture {self.name!r}: group shares sum to {total}, expected 1.0 "
                             f"({dict(self.shares)})")
        if self.pool_sizes not in ("paper", "sources"):
            raise ValueError(f"mixture {self.name!r}: pool_sizes={self.pool_sizes!r}, expected "
                             f"'paper' or 'sources'")

    @property
    def tasks(self) -> tuple[str, ...]:
        """All tasks of the groups with a non-zero share, in group order."""
        return tuple(t for g, ts in self.groups.items() if self.shares.get(g, 0) > 0 for t in ts)

    def group_of(self, task: str) -> str:
        for g, tasks in self.groups.items():
            if task in tasks:
                return g
        raise KeyError(f"task {task!r} is in no group of mixture {self.name!r}")

    def expand(self, available: list[str]) -> MixtureSpec:
        """Resolves wildcard members ("sft.*") against the available task names."""
        groups = {}
        for g, tasks in self.groups.items():
            out: list[str] = []
            for t in tasks:
                if t.endswith(".*"):
                    out += sorted(a for a in available if a.startswith(t[:-1]))
                else:
                    out.append(t)
            groups[g] = tuple(out)
        return dataclasses.replace(self, groups=groups)


STAGE1_SHARES = {"english": 0.32, "chinese": 0.17, "high_resource": 0.30, "low_resource": 0.09,
                 "parallel": 0.06, "knowledge": 0.05, "synthetic": 0.01}
STAGE2_SHARES = {"english": 0.28, "chinese": 0.15, "high_resource": 0.26, "low_resource": 0.15,
                 "parallel": 0.08, "knowledge": 0.06, "synthetic": 0.02}

MIXTURES: dict[str, MixtureSpec] = {
    "marco_stage1": MixtureSpec("marco_stage1", STAGE1_SHARES),
    "marco_stage2": MixtureSpec("marco_stage2", STAGE2_SHARES),
    # Stage-I structure over the package's sample corpus (a few thousand documents).
    "demo": MixtureSpec("demo", STAGE1_SHARES, pool_sizes="sources", skip_missing=True),
    # Every SFT chat task found under the sources root, proportional to its tokens (T=1 gives
    # proportional; the config's temperature applies).
    "sft": MixtureSpec("sft", {"sft": 1.0}, groups={"sft": ("sft.*",)}, pool_sizes="sources"),
}


def get_mixture(name: str, shares: Mapping[str, float] | None = None) -> MixtureSpec:
    """A registered mixture, optionally with its group shares replaced (a config edit)."""
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; registered: {', '.join(sorted(MIXTURES))}")
    spec = MIXTURES[name]
    if shares:
        spec = dataclasses.replace(spec, shares={g: float(s) for g, s in shares.items()})
    return spec


def temperature_weights(pools: Mapping[str, float], temperature: float) -> dict[str, float]:
    """n_i^(1/T) / sum_j n_j^(1/T) over `pools` (T=inf: uniform). Computed in log space."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (inf for uniform), got {temperature}")
    bad = {k: v for k, v in pools.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"pool sizes must be finite and > 0, got {bad}")
    logs = {k: math.log(v) / temperature for k, v in pools.items()}
    top = max(logs.values())
    unnorm = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(unnorm.values())
    return {k: v / total for k, v in unnorm.items()}


def task_rates(
    spec: MixtureSpec, temperature: float, pools: Mapping[str, float],
    empty: tuple[str, ...] = (),
) -> dict[str, float]:
    """Token share of every task: group share x temperature weight inside the group.

    `pools` must cover the tasks to use. Tasks absent from it are left out of their group: tasks
    without a source only when `spec.skip_missing`; tasks in `empty` (a source with zero
    records) whenever their group keeps another task (or `spec.skip_missing`). A group with a
    share but no task left is an error unless `spec.skip_missing` (then it is dropped and the
    other groups are scaled up).
    """
    rates: dict[str, float] = {}
    for g in spec.groups:
        share = spec.shares.get(g, 0.0)
        if share <= 0:
            continue
        present = {t: pools[t] for t in spec.groups[g] if t in pools}
        missing = [t for t in spec.groups[g] if t not in pools and t not in empty]
        if missing and not spec.skip_missing:
            raise ValueError(f"mixture {spec.name!r}, group {g!r}: no pool size / source for "
                             f"tasks {missing}")
        if not present:
            if spec.skip_missing:
                continue  # the group is dropped; the others are renormalised below
            zero = [t for t in spec.groups[g] if t in empty]
            raise ValueError(f"mixture {spec.name!r}: group {g!r} has share {share} but none of "
                             f"its tasks {list(spec.groups[g])} has a source with records"
                             + (f" ({', '.join(zero)}: zero records)" if zero else ""))
        for t, w in temperature_weights(present, temperature).items():
            rates[t] = share * w
    if not rates:
        raise ValueError(f"mixture {spec.name!r}: no task has a source")
    total = sum(rates.values())
    return {t: r / total for t, r in rates.items()}


def example_probabilities(
    token_rates: Mapping[str, float], mean_tokens: Mapping[str, float] | None
) -> dict[str, float]:
    """Per-example sampling probabilities that realise `token_rates` as shares of tokens.

    p_i = (r_i / l_i) / sum_j (r_j / l_j), l_i = mean tokens per document of task i. Without
    lengths (`mean_tokens` None) documents are assumed equally long, so p_i = r_i.
    """
    if mean_tokens is None:
        unnorm = dict(token_rates)
    else:
        bad = {t: mean_tokens.get(t) for t in token_rates if not mean_tokens.get(t, 0) > 0}
        if bad:
            raise ValueError(f"mean tokens per document must be > 0 for every task, got {bad}")
        unnorm = {t: r / mean_tokens[t] for t, r in token_rates.items()}
    total = sum(unnorm.values())
    return {t: v / total for t, v in unnorm.items()}
