"""ARC (AI2 Reasoning Challenge, English science questions), test split, 25-shot, acc.

Reads the published `<dir>/<ARC-Challenge|ARC-Easy>-<Split>.jsonl` (id, question{stem,
choices[{text,label}]}, answerKey); demonstrations from the `-Train.jsonl` beside it (or other
items of the evaluated file). The prompt is lm-eval's ("Question: ...\nAnswer:"), the choices the
answer texts, so acc_norm is the usual figure to read.
"""

from __future__ import annotations

from pathlib import Path

from marco_jax.evals.tasks.base import (
    ChoiceItem,
    EvalDataError,
    Subset,
    TaskData,
    few_shot_prompt,
    field,
    pick_shots,
    read_jsonl,
    resolve,
)


def read_questions(path: Path) -> list[dict]:
    out = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question = field(record, "question", where)
        choices = field(question, "choices", where)
        labels = [str(c["label"]) for c in choices]
        key = str(field(record, "answerKey", where))
        if key not in labels:
            raise EvalDataError(f"{where}: answerKey {key!r} not among labels {labels}")
        out.append({"id": record.get("id", str(number - 1)),
                    "query": f"Question: {field(question, 'stem', where).strip()}\nAnswer:",
                    "choices": tuple(" " + c["text"].strip() for c in choices),
                    "gold": labels.index(key)})
    return out


def load(data_root: Path, *, path: str = "benchmarks/arc", subset: str = "ARC-Challenge",
         split: str = "Test", shots: int = 25, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    questions = read_questions(directory / f"{subset}-{split}.jsonl")
    train = directory / f"{subset}-Train.jsonl"
    pool = read_questions(train) if split != "Train" and train.is_file() else questions
    items = []
    for i, q in enumerate(questions):
        exclude = [i] if pool is questions else []
        demos = [pool[j]["query"] + pool[j]["choices"][pool[j]["gold"]]
                 for j in pick_shots(len(pool), shots, exclude=exclude, seed=seed,
                                     salt=f"arc/{i}")]
        items.append(ChoiceItem(f"en/{q['id']}", few_shot_prompt("", demos, q["query"]),
                                q["choices"], q["gold"]))
    return TaskData("arc", "choice", "acc_norm", (Subset("en", "en", tuple(items)),),
                    settings={"shots": shots, "split": split.lower(), "subset": subset})
