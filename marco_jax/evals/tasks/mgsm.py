"""MGSM (grade-school maths in 11 languages), generation, exact match on the final number.

Reads google-research/url-nlp's `<dir>/mgsm_<lang>.tsv` (question<TAB>answer, no header, no
quoting). Demonstrations (optional) are other problems of the same file answered with their number
only, as in MGSM's direct setting; the last number of the generation is compared with the gold.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from marco_jax.evals import metrics
from marco_jax.evals.tasks.base import (
    EvalDataError,
    GenerationItem,
    Subset,
    TaskData,
    few_shot_prompt,
    pick_shots,
    read_csv_rows,
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

LANGUAGES = ("en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


def read_problems(path: Path) -> list[tuple[str, str]]:
    rows = read_csv_rows(path, header=False, delimiter="\t", quoting=csv.QUOTE_NONE)
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or metrics.extract_number(row[1]) is None:
            raise EvalDataError(f"{path}:{number}: expected question<TAB>number, got "
                                f"{len(row)} fields")
    return [(q.strip(), a.strip()) for q, a in rows]


def render(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def score(predictions: Sequence[str], items: Sequence[GenerationItem], subset: Subset
          ) -> dict[str, float]:
    hits = sum(metrics.number_matches(p, item.references[0])
               for p, item in zip(predictions, items, strict=True))
    return {"exact_match": 100.0 * hits / len(items)}


def load(data_root: Path, *, path: str = "benchmarks/mgsm",
         languages: Sequence[str] = LANGUAGES, shots: int = 0, max_new_tokens: int = 256,
         seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        problems = read_problems(directory / f"mgsm_{lang}.tsv")
        header = (f"Solve each {language_name(lang)} math problem. End the answer with the final "
                  "number.")
        items = []
        for i, (question, answer) in enumerate(problems):
            demos = [render(problems[j][0]) + " " + problems[j][1]
                     for j in pick_shots(len(problems), shots, exclude=[i], seed=seed,
                                         salt=f"mgsm/{lang}/{i}")]
            items.append(GenerationItem(f"{lang}/{i}",
                                        few_shot_prompt(header, demos, render(question)),
                                        (answer,)))
        subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("mgsm", "generate", "exact_match", tuple(subsets),
                    max_new_tokens=max_new_tokens, stop=("\n\n", "Question:"), scorer=score,
                    settings={"shots": shots, "split": "test"})
