"""AGIEval v1 (English and Chinese exam questions), 5-shot, acc.

Reads `<dir>/v1/<subtask>.jsonl` (passage, question, options "(A)...", label) and the
demonstrations of `<dir>/few_shot_prompts.csv` (rows "sample i": a dict literal per sub-task
column; empty cells where AGIEval gives fewer demonstrations), as ruixiangcui/AGIEval publishes
them. The query is lm-eval's AGIEval format; the choices are the option letters "(A)".."(E)".
Cloze sub-tasks (math, gaokao-mathcloze) are not multiple choice and are refused; items whose
label lists several letters (jec-qa-*, some gaokao-physics) are dropped and counted.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

from marco_jax.evals.tasks.base import (
    ChoiceItem,
    EvalDataError,
    Subset,
    TaskData,
    few_shot_prompt,
    field,
    letter_index,
    read_csv_rows,
    read_jsonl,
    require_file,
    resolve,
)

ENGLISH = ("aqua-rat", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en",
           "sat-en-without-passage", "sat-math")
CHINESE = ("gaokao-chinese", "gaokao-english", "gaokao-geography", "gaokao-history",
           "gaokao-biology", "gaokao-chemistry", "gaokao-physics", "gaokao-mathqa", "logiqa-zh")
MULTI_ANSWER = ("jec-qa-kd", "jec-qa-ca")
CLOZE = ("math", "gaokao-mathcloze")
# AGIEval demonstrates the passage-less SAT variant with the SAT-en examples.
SHOT_COLUMN = {"sat-en-without-passage": "sat-en"}


def subtask_language(subtask: str) -> str:
    return "zh" if subtask.startswith(("gaokao-", "jec-qa-")) or subtask == "logiqa-zh" else "en"


def _letters(options: Sequence[str]) -> str:
    return "ABCDE"[: len(options)]


def render(record: dict, language: str) -> str:
    passage = (record.get("passage") or "").strip()
    options = " ".join(o.strip() for o in record["options"])
    body = f"{passage} {record['question'].strip()}".strip()
    letters = _letters(record["options"])
    if language == "zh":
        return f"问题：{body} 选项：{options}\n答案：从{letters[0]}到{letters[-1]}, 我们应选择"
    return (f"Q: {body} Answer Choices: {options}\nA: Among {letters[0]} through "
            f"{letters[-1]}, the answer is")


def read_demonstrations(csv_path: Path, subtask: str) -> list[dict]:
    rows = read_csv_rows(require_file(csv_path, "AGIEval few_shot_prompts.csv"), header=False)
    column_name = SHOT_COLUMN.get(subtask, subtask)
    if not rows or column_name not in rows[0]:
        raise EvalDataError(f"{csv_path}: no column {column_name!r}")
    column = rows[0].index(column_name)
    demos = []
    for row in rows[1:]:
        if not row[0].startswith("sample") or not row[column].strip():
            continue
        try:
            record = ast.literal_eval(row[column])
        except (ValueError, SyntaxError):
            record = json.loads(row[column])
        if subtask in SHOT_COLUMN:
            record = {**record, "passage": None}
        demos.append(record)
    return demos


def load(data_root: Path, *, path: str = "benchmarks/agieval",
         subtasks: Sequence[str] = ENGLISH + CHINESE, shots: int = 5) -> TaskData:
    directory = resolve(data_root, path)
    subsets, dropped = [], {}
    for subtask in subtasks:
        if subtask in CLOZE:
            raise EvalDataError(f"agieval: {subtask!r} is a cloze task, not multiple choice; "
                                f"choose from {list(ENGLISH + CHINESE + MULTI_ANSWER)}")
        language = subtask_language(subtask)
        demos = [render(d, language) + " (" + d["label"] + ")"
                 for d in read_demonstrations(directory / "few_shot_prompts.csv",
                                              subtask)[:shots]
                 if isinstance(d.get("label"), str)]
        items = []
        file = directory / "v1" / f"{subtask}.jsonl"
        for number, record in read_jsonl(file):
            where = f"{file}:{number}"
            options, label = field(record, "options", where), field(record, "label", where)
            if not isinstance(label, str):
                key = "multi-answer label"
                dropped[key] = dropped.get(key, 0) + 1
                continue
            gold = letter_index(label, len(options), where)
            items.append(ChoiceItem(f"{subtask}/{number - 1}",
                                    few_shot_prompt("", demos, render(record, language)),
                                    tuple(f" ({letter})" for letter in _letters(options)), gold))
        if items:
            subsets.append(Subset(subtask, language, tuple(items)))
    return TaskData("agieval", "choice", "acc", tuple(subsets), dropped=dropped,
                    settings={"shots": shots, "split": "test"})
