"""Belebele (reading comprehension over FLORES passages, 4 answers), 1-shot, acc.

Reads `<dir>/<flores_code>.jsonl` in either the official layout (one question per line:
flores_passage, question, mc_answer1..4, correct_answer_num) or the passage-grouped layout of the
shared slice (text, items[question, answers[text, correct]]). The prompt is lm-eval's (P:/Q:/A-D/
Answer:), under a header that names the language; the choices are the letters.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    require_file,
    resolve,
)
from marco_jax.evals.tasks.languages import flores_code, language_name

LETTERS = ("A", "B", "C", "D")


def read_questions(path: Path) -> list[dict]:
    """[{passage, question, answers (4), gold}] in file order, either layout."""
    out = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        if "flores_passage" in record:  # official layout
            answers = [str(field(record, f"mc_answer{i}", where)) for i in range(1, 5)]
            gold = int(field(record, "correct_answer_num", where)) - 1
            if not 0 <= gold < 4:
                raise EvalDataError(f"{where}: correct_answer_num must be 1..4")
            out.append({"passage": record["flores_passage"],
                        "question": field(record, "question", where),
                        "answers": answers, "gold": gold})
            continue
        passage = field(record, "text", where)
        for q in field(record, "items", where):
            answers = field(q, "answers", where)
            correct = [i for i, a in enumerate(answers) if a.get("correct")]
            if len(answers) != 4 or len(correct) != 1:
                raise EvalDataError(f"{where}: expected 4 answers with exactly one correct")
            out.append({"passage": passage, "question": field(q, "question", where),
                        "answers": [a["text"] for a in answers], "gold": correct[0]})
    return out


def render(q: dict) -> str:
    options = "\n".join(f"{letter}: {text}" for letter, text in zip(LETTERS, q["answers"],
                                                                     strict=True))
    return f"P: {q['passage']}\nQ: {q['question'].strip()}\n{options}\nAnswer:"


def load(data_root: Path, *, path: str = "benchmarks/belebele",
         languages: Sequence[str] = ("en", "de"), shots: int = 1, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        file = require_file(directory / f"{flores_code(lang)}.jsonl", "Belebele file")
        questions = read_questions(file)
        header = (f"Answer each multiple-choice question about a passage in "
                  f"{language_name(lang)}.")
        items = []
        for i, q in enumerate(questions):
            same_passage = [j for j, other in enumerate(questions)
                            if other["passage"] == q["passage"]]
            demos = [render(questions[j]) + " " + LETTERS[questions[j]["gold"]]
                     for j in pick_shots(len(questions), shots, exclude=same_passage,
                                         seed=seed, salt=f"belebele/{lang}/{i}")]
            items.append(ChoiceItem(f"{lang}/{i}", few_shot_prompt(header, demos, render(q)),
                                    tuple(" " + letter for letter in LETTERS), q["gold"]))
        subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("belebele", "choice", "acc", tuple(subsets),
                    settings={"shots": shots, "split": "test"})

