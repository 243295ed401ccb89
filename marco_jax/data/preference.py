"""DPO preference pairs: record layouts -> (prompt, chosen, rejected), tokenized, packed in rows.

Layouts (one JSON object per record):
- strings: `{"prompt": str, "chosen": str, "rejected": str}` (optional `"system": str`); the
  prompt becomes one user turn, each answer one assistant turn;
- message lists (UltraFeedback-binarized / HH style): `{"chosen": [messages], "rejected":
  [messages]}` whose last message is the assistant answer and whose shared prefix is the prompt
  (a `prompt` string beside them, as UltraFeedback has, is ignored; the messages decide);
- TRL's conversational layout: `{"prompt": [messages], "chosen": [assistant message],
  "rejected": [assistant message]}`.
An optional `language`/`lang` field, else the language detected from prompt + chosen.
Bad pairs raise `chat_records.BadRecord` (its reasons; "prompt_mismatch" is pair-only).

Each sequence is the ChatML rendering of prompt + answer (`chat.encode_chat`); its log-prob
counts the answer's tokens: the last assistant turn's content and its <|im_end|>, the same
tokens the SFT mask marks (so prompt tokens never enter a log-prob).

Packing (`pack_pair_rows`): a pair's chosen and rejected sequences always share one row, as
consecutive segments; a row holds up to `pairs_per_row` pairs. Batch keys:
  tokens, targets, positions, segment_ids, loss_mask   [B, T] int32 (segment k = k-th sequence)
  chosen_segment, rejected_segment                     [B, P] int32 (segment id; 0 = empty slot)
  pair_language_ids                                    [B, P] int32 (-1 = none)
  ref_chosen_logps, ref_rejected_logps                 [B, P] float32 (precomputed reference)
  pair_ids                                             [B, P] int32 (index in the pair list,
                                                       -1 empty; host-side, to join reference
                                                       log-probs, not read by the loss)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from marco_jax.data.chat import encode_chat
from marco_jax.data.chat_records import (
    BadRecord,
    RecordCounters,
    check_on_bad_record,
    iter_records,
    language_index,
    record_language,
)
from marco_jax.data.row_packing import PackedSequence, assign_rows, empty_token_rows, write_sequence
from marco_jax.data.sources import BadRecord as SourceBadRecord
from marco_jax.data.tokenizer import Qwen2Tokenizer

DPO_TRUNCATION = ("none", "keep_start")
PAIR_FIELDS = ("chosen_segment", "rejected_segment", "pair_language_ids", "ref_chosen_logps",
               "ref_rejected_logps", "pair_ids")
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[tuple[str, str], ...]  # (role, content) turns, ends with a user turn
    chosen: str
    rejected: str
    language: str
    language_source: str
    where: str = ""

    def messages(self, answer: str) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt] + [
            {"role": "assistant", "content": answer}]


def _bad(reason: str, where: str, problem: str) -> BadRecord:
    return BadRecord(where, reason, problem)


def _string(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise _bad("wrong_type", where, f"field {key!r} must be a string or a message list, "
                                        f"got {type(value).__name__}")
    if not value.strip():
        raise _bad("empty_content", where, f"field {key!r} is empty")
    return value


def _messages(value: Any, key: str, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("wrong_type", where, f"field {key!r} must be a non-empty message list")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise _bad("wrong_type", where, f"{key}[{i}] must be an object with 'role' and "
                                            f"'content', got {type(m).__name__}")
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            raise _bad("missing_field", where, f"{key}[{i}] lacks {missing}; it has {sorted(m)}")
        if m["role"] not in ROLES:
            raise _bad("bad_role", where, f"{key}[{i}]['role'] is {m['role']!r}; expected one "
                                          f"of {ROLES}")
        if not isinstance(m["content"], str):
            raise _bad("wrong_type", where, f"{key}[{i}]['content'] must be a string, got "
                                            f"{type(m['content']).__name__}")
        if not m["content"].strip():
            raise _bad("empty_content", where, f"{key}[{i}] ({m['role']}) has empty content")
        turns.append((m["role"], m["content"]))
    return turns


def _split_prompt(record: Mapping[str, Any], where: str
                  ) -> tuple[list[tuple[str, str]], str, str]:
    for key in ("chosen", "rejected"):
        if key not in record:
            raise _bad("missing_field", where, f"a preference record needs 'chosen' and "
                                               f"'rejected'; it has {sorted(record)}")
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) or isinstance(rejected, str):
        if "prompt" not in record:
            raise _bad("missing_field", where, "string 'chosen'/'rejected' need a 'prompt'")
        prompt = [("user", _string(record, "prompt", where))]
        if "system" in record:
            prompt.insert(0, ("system", _string(record, "system", where)))
        return prompt, _string(record, "chosen", where), _string(record, "rejected", where)
    c, r = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
    if isinstance(record.get("prompt"), list):  # TRL conversational: prompt + answer lists
        prompt = _messages(record["prompt"], "prompt", where)
        c, r = prompt + c, prompt + r
    for key, turns in (("chosen", c), ("rejected", r)):
        if turns[-1][0] != "assistant":
            raise _bad("no_assistant_turn", where, f"the last message of {key!r} must be the "
                                                   f"assistant answer, got {turns[-1][0]!r}")
    if c[:-1] != r[:-1]:
        raise _bad("prompt_mismatch", where, "'chosen' and 'rejected' must share every message "
                                             "but the last (the prompt)")
    prompt = c[:-1]
    if not prompt or prompt[-1][0] != "user":
        raise _bad("missing_field", where, "the prompt (messages before the answer) must end "
                                           "with a user message")
    return prompt, c[-1][1], r[-1][1]


def parse_pair_record(record: Any, where: str = "") -> PreferencePair:
    """A validated preference pair (raises BadRecord)."""
    if not isinstance(record, Mapping):
        raise _bad("wrong_type", where, f"a record must be a JSON object, "
                                        f"got {type(record).__name__}")
    prompt, chosen, rejected = _split_prompt(record, where)
    for i, (role, _) in enumerate(prompt):
        if role == "system" and i:
            raise _bad("misplaced_system", where, f"prompt message {i} is a system message; "
                                                  f"only the first may be one")
    text = " ".join(c for r, c in prompt if r != "system") + " " + chosen
    language, source = record_language(record, text, where)
    return PreferencePair(tuple(prompt), chosen, rejected, language, source, where)


def encode_answer(pair: PreferencePair, answer: str, max_length: int = 0,
                  truncation: str = "none", tokenizer: Qwen2Tokenizer | None = None
                  ) -> PackedSequence:
    """ChatML ids of prompt + answer; target mask on the answer's tokens (its content and
    <|im_end|>). truncation "keep_start" cuts the sequence end at max_length tokens (TRL's
    default mode); "none" makes a longer sequence `too_long`. The answer must keep >= 1 token."""
    if truncation not in DPO_TRUNCATION:
        raise ValueError(f"truncation={truncation!r}; expected one of {DPO_TRUNCATION}")
    ids, mask = encode_chat(pair.messages(answer), tokenizer=tokenizer)
    # Only the final answer counts: the last run of masked tokens (earlier assistant turns of
    # the prompt end with <|im_end|> then an unmasked "\n", so runs never touch).
    start = max(i for i, m in enumerate(mask) if m)
    while start and mask[start - 1]:
        start -= 1
    mask = [m if i >= start else 0 for i, m in enumerate(mask)]
    if max_length > 0 and len(ids) > max_length:
        if truncation == "none" or sum(mask[:max_length]) == 0:
            raise _bad("too_long", pair.where,
                       f"{len(ids)} tokens > max_length {max_length}"
                       + ("" if truncation == "none" else " and the prompt alone fills it"))
        ids, mask = ids[:max_length], mask[:max_length]
    return PackedSequence(np.asarray(ids, np.int32), np.asarray(mask[1:], np.uint8))


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    chosen: PackedSequence
    rejected: PackedSequence
    language: str
    pair_id: int  # index in the data set (joins precomputed reference log-probs)

    @property
    def slots(self) -> int:
        return self.chosen.slots + self.rejected.slots


def encode_pair(pair: PreferencePair, pair_id: int, max_length: int = 0,
                truncation: str = "none", tokenizer: Qwen2Tokenizer | None = None
                ) -> EncodedPair:
    return EncodedPair(encode_answer(pair, pair.chosen, max_length, truncation, tokenizer),
                       encode_answer(pair, pair.rejected, max_length, truncation, tokenizer),
                       pair.language, pair_id)


def read_preference_pairs(pattern: str, on_bad_record: str = "error", max_length: int = 0,
                          truncation: str = "none", tokenizer: Qwen2Tokenizer | None = None
                          ) -> tuple[list[EncodedPair], RecordCounters]:
    """Every pair of `pattern`, encoded, with pair ids 0.. in file order over the kept pairs."""
    check_on_bad_record(on_bad_record)
    out: list[EncodedPair] = []
    counters = RecordCounters()
    for where, record in iter_records(pattern):
        try:
            if isinstance(record, SourceBadRecord):
                raise record
            pair = parse_pair_record(record, where)
            encoded = encode_pair(pair, len(out), max_length, truncation, tokenizer)
        except SourceBadRecord as e:
            if on_bad_record == "error":
                raise
            counters.skipped[e.reason] += 1
            continue
        counters.kept += 1
        counters.languages[pair.language] += 1
        counters.language_sources[pair.language_source] += 1
        out.append(encoded)
    return out, counters


def pack_pair_rows(pairs: Sequence[EncodedPair], seq_len: int, pairs_per_row: int,
                   languages: Sequence[str] = (),
                   ref_logps: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Rows [R, seq_len] + per-row pair slots [R, pairs_per_row] (see module docstring).
    ref_logps: [num pairs in the data set, 2] (chosen, rejected) indexed by pair_id, or None."""
    assignment = assign_rows([p.slots for p in pairs], seq_len, pairs_per_row)
    n = len(assignment)
    rows = empty_token_rows(n, seq_len)
    for key in PAIR_FIELDS:
        is_float = key.startswith("ref_")
        rows[key] = np.full((n, pairs_per_row), 0.0 if is_float else
                            (-1 if key in ("pair_language_ids", "pair_ids") else 0),
                            np.float32 if is_float else np.int32)
    for r, units in enumerate(assignment):
        pos, segment = 0, 0
        for k, i in enumerate(units):
            pair = pairs[i]
            for key, seq in (("chosen_segment", pair.chosen), ("rejected_segment", pair.rejected)):
                segment += 1
                pos = write_sequence(rows, r, pos, segment, seq)
                rows[key][r, k] = segment
            rows["pair_language_ids"][r, k] = language_index(pair.language, languages)
            rows["pair_ids"][r, k] = pair.pair_id
            if ref_logps is not None:
                rows["ref_chosen_logps"][r, k], rows["ref_rejected_logps"][r, k] = \
                    ref_logps[pair.pair_id]
    return rows


PAIR_PAD = {"pair_language_ids": -1, "pair_ids": -1}  # row_packing.pad_rows fill values
