"""seqio as the feed: `data.mixture` may name any registered seqio Task or Mixture.

`plan_seqio(data)`:
1. registers every task of our catalog (`seqio_tasks.register_tasks`: web.<lang>, bitext.*,
   knowledge, synthetic, sft.*) so a user's Mixture can name them;
2. imports `data.modules` (a user's Task/Mixture registrations);
3. resolves `data.mixture`: one of our mixtures (`mixtures.MIXTURES`) is planned as always and
   registered as a seqio Mixture with its temperature rates; any other name is looked up with
   `seqio.get_mixture_or_task`: a Task is the whole mixture, a Mixture gives each of its tasks
   its (relative, per-example) seqio rate.

Tasks that are ours keep the index-addressable path (`TaskSpec`: O(1) exact resume on any host
count). Every other seqio Task becomes a `SeqioTask`: its examples are read through seqio itself
(the task's source with shuffle=False, then its preprocessors with the fixed seed `data.seed`)
as a deterministic stream, epoch after epoch; the mixture's k-th example of the task is the
stream's k-th example. Resume is by REPLAY: after a restore the stream is re-read from its start
to the position needed (cost proportional to that position; every host reads the whole stream).
Exact whenever the stream is deterministic: no preprocessor that draws randomness outside seqio's
seeded map functions, and a source that reads in a fixed order without shuffling. (A one-to-one
preprocessor chain over an index-addressable source could be served in O(1) by index; not done.)

A stream example is its "targets" feature (token ids; Qwen2Vocabulary, or PassThroughVocabulary
for pre-tokenized ids); EOS is appended when the output feature says `add_eos` and the
preprocessors did not; an optional "loss_mask" feature of the same length masks the targets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import seqio

from marco_jax.config import ConfigError
from marco_jax.config.schema import DataSection
from marco_jax.data import mixtures as M
from marco_jax.data import seqio_tasks
from marco_jax.data.plan import MixturePlan, import_modules, measure_task, plan_mixture
from marco_jax.data.seqio_vocab import Qwen2Vocabulary
from marco_jax.data.tasks import Document, task_catalog
from marco_jax.data.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SeqioTask:
    """A seqio Task that is not ours, read as a deterministic stream of documents."""

    task: seqio.Task
    split: str
    seed: int

    kind = "seqio"

    @property
    def name(self) -> str:
        return self.task.name

    def dataset(self):
        """One epoch of the task's preprocessed examples, in a fixed order."""
        source = self.task.source.get_dataset(split=self.split, shuffle=False, seed=None)
        ds = self.task.preprocess_precache(source, seed=self.seed)
        return self.task.preprocess_postcache(ds, sequence_length=None, seed=self.seed)

    def document(self, example: dict[str, Any], k: int) -> Document:
        where = f"seqio task {self.name} ({self.split}) example {k}"
        if "targets" not in example:
            raise ValueError(f"{where}: no 'targets' feature (has {sorted(example)})")
        ids = np.asarray(example["targets"]).astype(np.int64).reshape(-1)
        tok = get_tokenizer()
        if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
            raise ValueError(f"{where}: 'targets' ids must lie in [0, {tok.vocab_size})")
        feature = self.task.output_features["targets"]
        if feature.add_eos and (not ids.size or ids[-1] != tok.eos_id):
            ids = np.append(ids, tok.eos_id)
        mask = None
        if "loss_mask" in example:
            full = np.asarray(example["loss_mask"]).reshape(-1)
            if len(full) >= len(ids) - 1:
                mask = full[1:len(ids)].astype(np.uint8)
                mask = np.pad(mask, (0, len(ids) - 1 - len(mask)))
        return Document(ids.astype(np.int32), mask)

    def first_documents(self, n: int) -> list[Document]:
        out = []
        for k, ex in enumerate(self.dataset().take(n).as_numpy_iterator()):
            out.append(self.document(ex, k))
        return out

    def open_stream(self, wanted: Callable[[int], bool]) -> SeqioStream:
        return SeqioStream(self, wanted)


class SeqioStream:
    """Example k of a `SeqioTask`'s stream (k counts on across epochs). Examples passed on the
    way to a requested one are kept while `wanted(k)` says a lane of this host will read them;
    a request behind the stream's position for a dropped example replays from the start."""

    def __init__(self, task: SeqioTask, wanted: Callable[[int], bool]):
        self.task, self.wanted = task, wanted
        self.position = 0  # the next example the stream yields
        self.replays = 0
        self._iter = None
        self._in_epoch = 0
        self._kept: dict[int, Document] = {}

    def rewind(self) -> None:
        self._iter, self.position, self._in_epoch = None, 0, 0
        self._kept.clear()

    def _next_example(self) -> dict[str, Any]:
        while True:
            if self._iter is None:
                self._iter, self._in_epoch = self.task.dataset().as_numpy_iterator(), 0
            try:
                ex = next(self._iter)
            except StopIteration:
                if self._in_epoch == 0:
                    raise ValueError(f"seqio task {self.task.name}: split {self.task.split!r} "
                                     "has no examples") from None
                self._iter = None  # the next epoch: the same deterministic order
                continue
            self._in_epoch += 1
            return ex

    def get(self, k: int) -> Document:
        if k in self._kept:
            return self._kept.pop(k)
        if k < self.position:
            log.info("seqio task %s: replaying its stream from the start to example %d",
                     self.task.name, k)
            self.replays += 1
            self.rewind()
        while True:
            at = self.position
            doc = self.task.document(self._next_example(), at)
            self.position += 1
            if at == k:
                return doc
            if self.wanted(at):
                self._kept[at] = doc


def _check_vocabulary(task: seqio.Task) -> None:
    feats = task.output_features
    if "targets" not in feats:
        raise ConfigError(f"seqio task {task.name!r} has no 'targets' output feature (has "
                          f"{sorted(feats)}); the trainer reads token ids from 'targets'")
    vocab = feats["targets"].vocabulary
    if not isinstance(vocab, Qwen2Vocabulary | seqio.PassThroughVocabulary):
        raise ConfigError(f"seqio task {task.name!r}: 'targets' vocabulary is {vocab}; the "
                          "model reads Qwen2 token ids: use marco_jax.data.seqio_vocab."
                          "Qwen2Vocabulary (or PassThroughVocabulary for pre-tokenized ids)")


def register_plan(plan: MixturePlan) -> None:
    """Registers our plan's tasks and the plan as a seqio Mixture (its example rates)."""
    seqio_tasks.register_mixture(plan)


def plan_seqio(data: DataSection) -> MixturePlan:
    """The plan for `data.mixture` with seqio in play (see the module docstring)."""
    catalog = task_catalog(data.sources_dir, data.task_sources or None)
    seqio_tasks.register_tasks(catalog)
    import_modules(data)
    if data.mixture in M.MIXTURES:
        plan = plan_mixture(data)
        register_plan(plan)
        return plan
    try:
        provider = seqio.get_mixture_or_task(data.mixture)
    except ValueError:
        raise ConfigError(
            f"data.mixture={data.mixture!r}: neither one of our mixtures "
            f"({', '.join(sorted(M.MIXTURES))}) nor a registered seqio Task or Mixture"
            + (f" (after importing data.modules={list(data.modules)})" if data.modules else
               "; register it in a module named by data.modules")) from None
    if isinstance(provider, seqio.Task):
        rates = [(provider, 1.0)]
    else:
        rates = [(t, float(provider.get_rate(t))) for t in provider.tasks]
    tasks, probs, mean_tokens, empty, origin = [], {}, {}, [], {}
    for task, rate in rates:
        if rate <= 0:
            continue
        spec = catalog.get(task.name) if seqio_tasks.is_ours(task) else None
        if spec is not None:
            if len(spec.source) == 0:
                empty.append(task.name)
                continue
            mean_tokens[task.name] = measure_task(spec, data.estimate_docs)[1]
            entry, origin[task.name] = spec, "seqio rate"
        else:
            _check_vocabulary(task)
            entry = SeqioTask(task, data.seqio_split, data.seed)
            docs = entry.first_documents(data.estimate_docs)
            if not docs:
                empty.append(task.name)
                continue
            mean_tokens[task.name] = float(np.mean([len(d.tokens) for d in docs]))
            origin[task.name] = "seqio rate (stream)"
        tasks.append(entry)
        probs[task.name] = rate
    for name in empty:
        log.warning("seqio mixture %s: task %s has zero records; left out", data.mixture, name)
    if not tasks:
        raise ConfigError(f"data.mixture={data.mixture!r}: none of its tasks has records "
                          f"(empty: {empty})")
    total = sum(probs.values())
    probs = {n: p / total for n, p in probs.items()}
    tokens = {n: p * mean_tokens[n] for n, p in probs.items()}
    token_rates = {n: v / sum(tokens.values()) for n, v in tokens.items()}
    group = f"seqio:{provider.name}"
    return MixturePlan(
        name=provider.name, tasks=tasks, groups=dict.fromkeys(probs, group),
        group_shares={group: 1.0}, pools={}, pool_origin=origin, mean_tokens=mean_tokens,
        token_rates=token_rates, probabilities=probs, temperature=data.temperature, missing=[],
        empty=empty)
