"""seqio Tasks and Mixtures over the same tasks and rates the training pipeline uses.

`register_tasks(catalog)` adds one `seqio.Task` per `TaskSpec`; its records are rendered by the
task's own `text()` (templates, ChatML) and tokenized by seqio with `Qwen2Vocabulary`, EOS
appended -- the same tokens as `TaskSpec.document`. SFT tasks yield pre-tokenized ChatML (ids plus
the assistant-only `loss_mask`) because seqio's string tokenization cannot keep specials out of
message text. `register_mixture(plan)` adds a `seqio.Mixture` with the plan's example rates.

These registrations happen whenever a plan is built with seqio loaded (`seqio_feed`), so
`seqio.get_mixture_or_task("marco_stage1")` works for users, and a user's own seqio Mixture can
name our tasks. The training iterator reads our tasks by index (exact O(1) resume), not through
tf.data: `is_ours` tells `seqio_feed` which registered Tasks those are.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from marco_jax.data.seqio_vocab import Qwen2Vocabulary
from marco_jax.data.tasks import TaskSpec


@functools.cache
def vocabulary() -> Qwen2Vocabulary:
    return Qwen2Vocabulary()


def output_features(kind: str) -> dict[str, seqio.Feature]:
    feats = {"targets": seqio.Feature(vocabulary(), add_eos=kind != "sft", dtype=tf.int32)}
    if kind == "sft":
        feats["loss_mask"] = seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False,
                                           dtype=tf.int32)
    return feats


def _dataset_fn(task: TaskSpec):
    def records():
        src = task.source
        for i in range(len(src)):
            rec = src[i]
            if task.kind == "sft":
                doc = task.document(rec, f"{task.name} document {i}")
                mask = np.concatenate([[0], doc.target_mask]).astype(np.int32)
                yield {"targets": doc.tokens, "loss_mask": mask}
            else:
                yield {"text": task.text(rec, f"{task.name} document {i}")}

    if task.kind == "sft":
        signature = {"targets": tf.TensorSpec([None], tf.int32),
                     "loss_mask": tf.TensorSpec([None], tf.int32)}
    else:
        signature = {"text": tf.TensorSpec([], tf.string)}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one split; order is the source's
        return tf.data.Dataset.from_generator(records, output_signature=signature)

    return dataset_fn


_OURS_ATTR = "_marco_jax_task"


def is_ours(task: seqio.Task) -> bool:
    """Whether `task` was registered by `register_tasks` (a TaskSpec read by index)."""
    return getattr(task, _OURS_ATTR, False)


def register_tasks(catalog: dict[str, TaskSpec]) -> list[str]:
    """Registers (or replaces) a seqio Task per catalog entry; returns the names. Sources are
    not opened here (num_input_examples is left unknown)."""
    for task in catalog.values():
        if task.name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(task.name)
        preprocessors = [] if task.kind == "sft" else [
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
        ]
        registered = seqio.TaskRegistry.add(
            task.name,
            source=seqio.FunctionDataSource(_dataset_fn(task), splits=["train"]),
            output_features=output_features(task.kind),
            preprocessors=preprocessors,
            shuffle_buffer_size=None,
        )
        setattr(registered, _OURS_ATTR, True)
    return list(catalog)


def register_mixture(plan) -> seqio.Mixture:
    """A seqio Mixture of `plan.tasks` with the plan's per-example sampling rates."""
    register_tasks({t.name: t for t in plan.tasks})
    if plan.name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(plan.name)
    return seqio.MixtureRegistry.add(
        plan.name, [(n, plan.probabilities[n]) for n in plan.names])
