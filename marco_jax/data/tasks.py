"""Tasks: one per (source, language). Where each task's shards live and how a record becomes tokens.

Task names: `web.<lang>` (29), `bitext.en_<lang>` (28), `knowledge`, `synthetic`, `sft.<name>`.
Their sources are found under a root directory (local or gs://) by convention, and any task's
source can be overridden by a path/glob (`config.data.task_sources`):

    web.<lang>       <root>/web/<lang>/<shards>   or  <root>/web/<lang>.jsonl[.gz]
    bitext.<a>_<b>   <root>/bitext/<a>-<b>/<shards> or <root>/bitext/<a>-<b>.jsonl[.gz]
    knowledge        <root>/knowledge/<shards>    or  <root>/knowledge.jsonl[.gz]
    synthetic        <root>/synthetic/<shards>    or  <root>/synthetic.jsonl[.gz]
    sft.<name>       <root>/sft/<name>/<shards>   or  <root>/sft/<name>.jsonl[.gz]

<shards> are *.jsonl[.gz], *.tfrecord*, or *.array_record* files. Record fields:
text tasks `text` (or pre-tokenized `tokens`/`input_ids`); bitext `src`/`tgt`, or the two
language codes as keys, or `translation: {<lang>: ...}`; SFT `messages: [{role, content}]`,
ShareGPT `conversations: [{from, value}]` or `prompt`/`response` (`chat_records.py`).

Rendering here is the one definition of a task's documents; the seqio Tasks (`seqio_tasks.py`)
and the training pipeline both call it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from marco_jax.data import languages as L
from marco_jax.data import mixtures as M
from marco_jax.data.chat import encode_chat, render_chatml
from marco_jax.data.chat_records import record_turns
from marco_jax.data.sources import DocumentSource, expand_pattern, is_remote, read_stats
from marco_jax.data.templates import render_translation
from marco_jax.data.tokenizer import get_tokenizer

# In order of preference: data_pipelines writes a JSONL copy beside its binary shards.
SHARD_GLOBS = ("*.array_record*", "*.tfrecord*", "*.jsonl", "*.jsonl.gz")
SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample_data")


@dataclasses.dataclass(frozen=True)
class Document:
    """A tokenized document: `tokens` (int32, ends with EOS for plain text) and `target_mask`
    (uint8, one per next-token target, i.e. len(tokens) - 1; None means every target counts)."""

    tokens: np.ndarray
    target_mask: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # web | bitext | knowledge | synthetic | sft
    pattern: str  # a path or glob of shards
    languages: tuple[str, ...] = ()

    @functools.cached_property
    def source(self) -> DocumentSource:
        return DocumentSource(self.pattern)

    def stats(self) -> dict[str, Any] | None:
        lang = self.languages[0] if self.kind == "web" else None
        return read_stats(self.pattern, lang)

    # -- rendering ----------------------------------------------------------------------------
    def text(self, record: Mapping[str, Any], where: str = "") -> str:
        """The document text of a plain-text or bitext record (SFT: the ChatML rendering)."""
        where = where or self.name
        if self.kind == "bitext":
            a, b = self.languages
            text_a, text_b = _bitext_sides(record, a, b, where)
            return render_translation(a, b, text_a, text_b)
        if self.kind == "sft":
            return render_chatml(_messages(record, where))
        for key in ("text", "content"):
            value = record.get(key)
            if isinstance(value, str):
                return value
        raise ValueError(f"{where}: expected a string field 'text' (or pre-tokenized 'tokens'), "
                         f"got fields {sorted(record)}")

    def document(self, record: Mapping[str, Any], where: str = "") -> Document:
        """Tokens (+ target mask for SFT) of one record."""
        tok = get_tokenizer()
        if self.kind == "sft":
            return chat_document(_messages(record, where or self.name))
        if self.kind != "bitext":
            for key in ("tokens", "input_ids"):
                if key in record:
                    ids = np.asarray(record[key], dtype=np.int64)
                    if ids.ndim != 1 or (ids.size and (ids.min() < 0 or
                                                       ids.max() >= tok.vocab_size)):
                        raise ValueError(f"{where or self.name}: field {key!r} must be a list of "
                                         f"token ids in [0, {tok.vocab_size})")
                    if not ids.size or ids[-1] != tok.eos_id:
                        ids = np.append(ids, tok.eos_id)
                    return Document(ids.astype(np.int32))
        ids = tok.encode(self.text(record, where))
        ids.append(tok.eos_id)
        return Document(np.asarray(ids, dtype=np.int32))


def chat_document(messages: list[Mapping[str, str]]) -> Document:
    """ChatML tokens (`chat.encode_chat`) with the loss on assistant content and <|im_end|>."""
    ids, mask = encode_chat(messages)
    return Document(np.asarray(ids, dtype=np.int32), np.asarray(mask[1:], dtype=np.uint8))


def _messages(record: Mapping[str, Any], where: str) -> list[Mapping[str, str]]:
    """The conversation of an SFT record in any layout `chat_records` reads (messages,
    ShareGPT conversations, prompt/response); a bad record raises `chat_records.BadRecord`."""
    turns, _ = record_turns(record, where)
    return [{"role": role, "content": content} for role, content in turns]


def _bitext_sides(record: Mapping[str, Any], a: str, b: str, where: str) -> tuple[str, str]:
    for ka, kb in (("src", "tgt"), (a, b), ("source", "target")):
        if isinstance(record.get(ka), str) and isinstance(record.get(kb), str):
            if ka == "src" and record.get("src_lang", a) != a:
                # A pair stored the other way round.
                if record.get("src_lang") == b and record.get("tgt_lang", a) == a:
                    return record[kb], record[ka]
                raise ValueError(f"{where}: src_lang={record.get('src_lang')!r} tgt_lang="
                                 f"{record.get('tgt_lang')!r}, expected the pair {a}-{b}")
            return record[ka], record[kb]
    tr = record.get("translation")
    if isinstance(tr, Mapping) and isinstance(tr.get(a), str) and isinstance(tr.get(b), str):
        return tr[a], tr[b]
    raise ValueError(f"{where}: bitext record needs 'src'/'tgt', '{a}'/'{b}' or "
                     f"'translation': {{'{a}', '{b}'}}; got fields {sorted(record)}")


def _find_shards(root: str, stem: str) -> str | None:
    """The shard pattern for `<root>/<stem>/` or `<root>/<stem>.jsonl[.gz]`, if any exist."""
    folder = f"{root.rstrip('/')}/{stem}"
    for ext in SHARD_GLOBS:
        if expand_pattern(f"{folder}/{ext}"):
            return f"{folder}/{ext}"
    for ext in (".jsonl", ".jsonl.gz"):
        if expand_pattern(folder + ext):
            return folder + ext
    return None


def _list_names(folder: str) -> list[str]:
    """Entry names (files without extensions, and folders) of a local or remote folder."""
    if is_remote(folder):
        import tensorflow as tf

        entries = tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(folder) else []
    else:
        entries = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted({e.rstrip("/").split(".")[0] for e in entries})


def task_catalog(root: str = "", overrides: Mapping[str, str] | None = None) -> dict[str, TaskSpec]:
    """Every task whose source exists under `root` (default: the package's sample corpus),
    plus every overridden one. Overrides must name known tasks or `sft.<name>`."""
    root = root or SAMPLE_DATA_DIR
    overrides = dict(overrides or {})
    kinds: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # name -> (kind, stem, languages)
    for lang in L.LANGUAGES:
        kinds[M.web_task(lang)] = ("web", f"web/{lang}", (lang,))
    for a, b in L.BITEXT_PAIRS:
        kinds[M.bitext_task(a, b)] = ("bitext", f"bitext/{a}-{b}", (a, b))
    kinds[M.KNOWLEDGE_TASK] = ("knowledge", "knowledge", ())
    kinds[M.SYNTHETIC_TASK] = ("synthetic", "synthetic", ())
    for name in _list_names(f"{root.rstrip('/')}/sft"):
        kinds[f"sft.{name}"] = ("sft", f"sft/{name}", ())
    for name in overrides:
        if name.startswith("sft."):
            kinds.setdefault(name, ("sft", "", ()))
        elif name not in kinds:
            raise ValueError(f"task_sources names unknown task {name!r}; known: web.<lang>, "
                             f"bitext.en_<lang>, knowledge, synthetic, sft.<name>")
    catalog = {}
    for name, (kind, stem, langs) in kinds.items():
        pattern = overrides.get(name) or _find_shards(root, stem)
        if pattern:
            catalog[name] = TaskSpec(name, kind, pattern, langs)
    return catalog
