"""XNLI (natural language inference), dev split, acc by log-likelihood of the verbalised label.

Reads the XTREME per-language TSV `<dir>/<split>-<lang>.tsv` (premise, hypothesis, label; no
header). Each item asks whether the hypothesis follows, in the GPT-3/ANLI style lm-eval uses for
NLI ("True, False or Neither?"), under a header naming the language; the three choices are the
verbalisations of entailment / neutral / contradiction.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from marco_jax.evals.tasks.base import (
    ChoiceItem,
    EvalDataError,
    Subset,
    TaskData,
    few_shot_prompt,
    pick_shots,
    read_csv_rows,
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

LABELS = ("entailment", "neutral", "contradiction")
VERBALISED = (" True", " Neither", " False")
LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi",
             "zh")


def read_pairs(path: Path) -> list[dict]:
    pairs = []
    for number, row in enumerate(read_csv_rows(path, header=False, delimiter="\t",
                                               quoting=csv.QUOTE_NONE), 1):
        if len(row) != 3:
            raise EvalDataError(f"{path}:{number}: expected 3 tab-separated fields "
                                f"(premise, hypothesis, label), got {len(row)}")
        premise, hypothesis, label = row
        if label not in LABELS:
            raise EvalDataError(f"{path}:{number}: label {label!r} not in {list(LABELS)}")
        context = f"{premise.strip()}\nQuestion: {hypothesis.strip()} True, False or Neither?\n" \
                  "Answer:"
        pairs.append({"context": context, "gold": LABELS.index(label)})
    return pairs


def load(data_root: Path, *, path: str = "benchmarks/xnli",
         languages: Sequence[str] = LANGUAGES, split: str = "dev", shots: int = 0,
         seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        pairs = read_pairs(directory / f"{split}-{lang}.tsv")
        header = (f"Each premise and question below is in {language_name(lang)}. Answer True if "
                  "the statement follows from the premise, False if it contradicts it, and "
                  "Neither otherwise.")
        items = []
        for i, pair in enumerate(pairs):
            demos = [pairs[j]["context"] + VERBALISED[pairs[j]["gold"]]
                     for j in pick_shots(len(pairs), shots, exclude=[i], seed=seed,
                                         salt=f"xnli/{lang}/{i}")]
            items.append(ChoiceItem(f"{lang}/{i}",
                                    few_shot_prompt(header, demos, pair["context"]),
                                    VERBALISED, pair["gold"]))
        subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("xnli", "choice", "acc", tuple(subsets),
                    settings={"shots": shots, "split": split})
