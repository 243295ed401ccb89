"""What every benchmark loader returns: items (multiple choice or generation) grouped in subsets
(one per language, translation direction or sub-task), plus how to score them.

Loaders read the benchmark's published files from a local path. Few-shot demonstrations are
picked deterministically (a seeded draw per evaluated item, never the item itself), so two runs,
two checkpoints or two machines see the very same prompts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

FEWSHOT_SEPARATOR = "\n\n"


class EvalDataError(ValueError):
    """A benchmark file is missing or not in its published format (message names file and key)."""


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
    """Score `context + choice` for each choice; `gold` indexes the right one."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclasses.dataclass(frozen=True)
class GenerationItem:
    """Generate from `prompt`; `references` are the accepted answers / reference translations."""

    id: str
    prompt: str
    references: tuple[str, ...]


Item = ChoiceItem | GenerationItem


@dataclasses.dataclass(frozen=True)
class Subset:
    """Items of one language (or direction, or sub-task). `language` is the grouping key of the
    report: the ISO code, or "src-tgt" for translation."""

    key: str
    language: str
    items: tuple[Item, ...]


# Scores generated texts of one subset: (predictions, items, subset) -> {metric: value (percent)}.
GenerationScorer = Callable[[Sequence[str], Sequence[GenerationItem], Subset], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One benchmark ready to run. kind "choice" is scored by log-likelihood (acc, acc_norm);
    kind "generate" by `scorer` on the continuations (cut at the first `stop` string)."""

    name: str
    kind: Literal["choice", "generate"]
    primary_metric: str
    subsets: tuple[Subset, ...]
    grouping: Literal["language", "direction"] = "language"
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    scorer: GenerationScorer | None = None
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind == "generate" and (self.scorer is None or self.max_new_tokens <= 0):
            raise ValueError(f"{self.name}: a generation task needs a scorer and max_new_tokens")
        if not self.subsets:
            raise EvalDataError(f"{self.name}: no subsets to evaluate")


# --- few-shot -------------------------------------------------------------------------------


def pick_shots(pool_size: int, k: int, *, exclude: Sequence[int] = (), seed: int = 0,
               salt: str = "") -> list[int]:
    """`k` distinct indices into a pool of `pool_size`, none in `exclude`, drawn by a RNG seeded
    from (seed, salt) (salt: e.g. the item id): deterministic and varied across items."""
    allowed = [i for i in range(pool_size) if i not in set(exclude)]
    if k <= 0 or not allowed:
        return []
    rng = random.Random(f"{seed}:{salt}")
    return rng.sample(allowed, min(k, len(allowed)))


def few_shot_prompt(header: str, demonstrations: Sequence[str], query: str) -> str:
    """header, then demonstrations, then the query, separated by blank lines."""
    parts = ([header] if header else []) + list(demonstrations) + [query]
    return FEWSHOT_SEPARATOR.join(parts)


# --- files ----------------------------------------------------------------------------------


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EvalDataError(f"{path}: {what} not found")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-empty line; a bad line raises naming file and line."""
    with require_file(path, "jsonl file").open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{path}:{number}: expected a JSON object")
            yield number, record


def read_csv_rows(path: Path, *, header: bool, delimiter: str = ",",
                  quoting: int = csv.QUOTE_MINIMAL) -> list[dict[str, str]] | list[list[str]]:
    with require_file(path, "csv file").open(encoding="utf-8", newline="") as f:
        if header:
            return list(csv.DictReader(f, delimiter=delimiter, quoting=quoting))
        return list(csv.reader(f, delimiter=delimiter, quoting=quoting))


def field(record: dict, key: str, where: str) -> Any:
    if key not in record:
        raise EvalDataError(f"{where}: missing key {key!r} (have {sorted(record)})")
    return record[key]


def letter_index(letter: str, n: int, where: str) -> int:
    index = "ABCDEFGHIJ".find(letter.strip().upper()) if letter.strip() else -1
    if not 0 <= index < n:
        raise EvalDataError(f"{where}: answer {letter!r} is not one of "
                            f"{list('ABCDEFGHIJ'[:n])}")
    return index


def resolve(data_root: Path, path: str | Path) -> Path:
    """A loader's `path` option: absolute, or relative to the suite's data_root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root / path
