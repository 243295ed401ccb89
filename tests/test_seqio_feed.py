"""seqio as the feed: a user's module (data.modules) registers a seqio Task over a TFDS builder
directory built here from local files, a Task over a plain FunctionDataSource, and a Mixture of
both with our web.en; the trainer trains on it, and a restored iterator (fresh object, other host
counts) yields exactly the uninterrupted run's next batches."""

from __future__ import annotations

import hashlib
import sys
import textwrap

import numpy as np
import pytest

from marco_jax.config import ConfigError, to_experiment
from marco_jax.data.packing import FIELDS
from marco_jax.data.pipeline import make_train_iterator, merge_states, resolve_plan
from marco_jax.data.tokenizer import get_tokenizer

MODULE = "user_seqio_tasks_for_test"


def _texts(shared_data, lang: str, n: int) -> list[str]:
    path = shared_data / "text" / "leipzig_sentences" / f"{lang}.txt"
    return [s.strip() for s in path.read_text("utf-8").splitlines() if s.strip()][:n]


@pytest.fixture(scope="module")
def user_module(tmp_path_factory, shared_data):
    """A module that registers user.notes (TFDS builder dir), user.fn (FunctionDataSource with a
    filter preprocessor) and user.mix = web.en + both; the TFDS data is prepared here, offline."""
    tmp = tmp_path_factory.mktemp("user")
    notes, fn_texts = _texts(shared_data, "de", 30), _texts(shared_data, "fr", 40)
    (tmp / "notes.txt").write_text("\n".join(notes), "utf-8")
    (tmp / "fn.txt").write_text("\n".join(fn_texts), "utf-8")
    (tmp / f"{MODULE}.py").write_text(textwrap.dedent(f'''
        import functools, pathlib
        import seqio, tensorflow as tf, tensorflow_datasets as tfds
        from marco_jax.data.seqio_vocab import Qwen2Vocabulary

        HERE = pathlib.Path({str(tmp)!r})

        class LocalNotes(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")
            def _info(self):
                return tfds.core.DatasetInfo(builder=self,
                    features=tfds.features.FeaturesDict({{"text": tfds.features.Text()}}))
            def _split_generators(self, dl_manager):
                return {{"train": self._generate_examples(HERE / "notes.txt")}}
            def _generate_examples(self, path):
                for i, line in enumerate(path.read_text("utf-8").splitlines()):
                    yield i, {{"text": line}}

        builder = LocalNotes(data_dir=str(HERE / "tfds"))
        builder.download_and_prepare()  # no download: examples come from notes.txt

        FEATURES = {{"targets": seqio.Feature(Qwen2Vocabulary(), add_eos=True)}}
        TEXT = [functools.partial(seqio.preprocessors.rekey, key_map={{"targets": "text"}}),
                seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]

        def fn_dataset(split, shuffle_files):
            lines = (HERE / "fn.txt").read_text("utf-8").splitlines()
            return tf.data.Dataset.from_tensor_slices({{"text": lines}})

        def long_enough(ds):
            return ds.filter(lambda ex: tf.strings.length(ex["text"]) > 40)

        for name in ("user.notes", "user.fn", "user.mix"):
            for reg in (seqio.MixtureRegistry, seqio.TaskRegistry):
                if name in reg.names():
                    reg.remove(name)
        seqio.TaskRegistry.add("user.notes", source=seqio.TfdsDataSource(
            tfds_name="local_notes:1.0.0", tfds_data_dir=str(HERE / "tfds")),
            preprocessors=TEXT, output_features=FEATURES)
        seqio.TaskRegistry.add("user.fn", source=seqio.FunctionDataSource(fn_dataset, ["train"]),
            preprocessors=[long_enough] + TEXT, output_features=FEATURES)
        seqio.MixtureRegistry.add("user.mix", [("web.en", 2.0), ("user.notes", 1.0),
                                               ("user.fn", 1.0)])
    '''))
    sys.path.insert(0, str(tmp))
    yield {"notes": notes, "fn": [t for t in fn_texts if len(t) > 40]}
    sys.path.remove(str(tmp))


def config(**data):
    base = dict(mixture="user.mix", modules=[MODULE], seq_len=48, global_batch_size=4, seed=5,
                packing_lookahead=3, prefetch=2)
    return to_experiment({"model": {"preset": "tiny"}, "data": base | data})


def batch_hash(parts) -> str:
    h = hashlib.sha256()
    for k in FIELDS:
        h.update(np.ascontiguousarray(np.concatenate([p[k] for p in parts])).tobytes())
    return h.hexdigest()


def test_plan_and_tokens_come_through_seqio(user_module):
    plan = resolve_plan(config())
    assert plan.names == ["user.fn", "user.notes", "web.en"]
    assert plan.probabilities == pytest.approx({"user.fn": 0.25, "user.notes": 0.25,
                                                "web.en": 0.5})
    assert [t.kind for t in plan.tasks] == ["seqio", "seqio", "web"]  # web.en: ours, by index
    it = make_train_iterator(config(), 0, 1)
    tok = get_tokenizer()
    # Independent reference: every user segment that ends a document is the end of one of the
    # user's texts tokenized by our tokenizer + EOS (longer documents are chunked).
    expect = {n: [tok.encode(t) + [tok.eos_id] for t in user_module[n.split(".")[1]]]
              for n in ("user.notes", "user.fn")}
    seen = {"user.notes": 0, "user.fn": 0}
    for _ in range(30):
        if min(seen.values()) >= 3:
            break
        b = next(it)
        for r in range(4):
            seg = b["segment_ids"][r]
            for s in range(1, seg.max() + 1):
                idx = np.flatnonzero(seg == s)
                name = plan.names[int(b["source_ids"][r, idx[0]])]
                if name in seen and b["targets"][r, idx[-1]] == tok.eos_id and \
                        b["positions"][r, idx[0]] == 0:
                    doc = b["tokens"][r, idx].tolist() + [tok.eos_id]
                    assert any(e[-len(doc):] == doc for e in expect[name])
                    seen[name] += 1
    assert min(seen.values()) >= 3


def test_restored_iterator_repeats_the_uninterrupted_batches(user_module):
    """State taken mid-stream (prefetch on): a fresh iterator, and two simulated hosts, continue
    with the same batches."""
    n, more = 6, 8
    full = make_train_iterator(config(), 0, 1)
    hashes = []
    for step in range(n + more):
        if step == n:
            state = full.get_state()
        hashes.append(batch_hash([next(full)]))
    assert state["step"] == n
    again = make_train_iterator(config(), 0, 1)
    again.set_state(state)
    assert [batch_hash([next(again)]) for _ in range(more)] == hashes[n:]
    two = [make_train_iterator(config(), h, 2) for h in range(2)]
    for it in two:
        it.set_state(state)
    assert [batch_hash([next(it) for it in two]) for _ in range(more)] == hashes[n:]
    merged = merge_states([it.get_state() for it in two])
    assert merged == full.get_state() | {"step": n + more}
    streams = list(again.inner._streams.values())
    assert sum(s.replays for s in streams) == 0  # restore read each stream forward once


def test_unknown_name_and_failing_module_are_one_line(user_module):
    with pytest.raises(ConfigError, match="data.mixture='nope': neither one of our mixtures"):
        resolve_plan(config(mixture="nope"))
    with pytest.raises(ConfigError, match="importing 'no_such_module_xyz' failed"):
        resolve_plan(config(modules=["no_such_module_xyz"]))


def test_our_mixture_is_registered_as_a_seqio_mixture(user_module):
    import seqio

    plan = resolve_plan(config(mixture="demo", modules=[]))
    mix = seqio.get_mixture_or_task("demo")
    assert sorted(t.name for t in mix.tasks) == sorted(plan.names)
    for t in mix.tasks:
        assert mix.get_rate(t) == pytest.approx(plan.probabilities[t.name])


def test_trainer_trains_on_the_user_mixture(user_module, tmp_path):
    import jax

    from marco_jax.train.loop import train

    c = to_experiment({
        "model": {"preset": "tiny"},
        "data": dict(mixture="user.mix", modules=[MODULE], seq_len=32, global_batch_size=2,
                     seed=5, packing_lookahead=3),
        "train": dict(steps=3, log_every=1, loss_chunk=16),
        "checkpoint": dict(every=2, keep=2, async_save=False),
        "optim": dict(peak_lr=1e-3, warmup_steps=1)})
    out = train(c, str(tmp_path / "run"), progress=False, devices=jax.devices()[:1])
    assert out["status"] == "done" and out["step"] == 3
    assert np.isfinite(out["last_loss"])
