"""XCOPA (causal commonsense, 2 alternatives), val split, 5-shot, acc.

Reads `<dir>/<lang>/<split>.<lang>.jsonl` (premise, choice1, choice2, question, label) as the
cambridgeltl/xcopa repository publishes it. The prompt is lm-eval's: the premise without its final
period, the language's own "because"/"therefore", then each alternative (first letter lowered).
Demonstrations are other items of the same file with their right alternative.
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
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

# lm-eval's connectors (lm_eval/tasks/xcopa/utils.py), plus English for the original COPA.
CONNECTORS: dict[str, tuple[str, str]] = {  # lang: (cause, effect)
    "et": ("sest", "seetõttu"), "ht": ("poukisa", "donk sa"), "it": ("perché", "quindi"),
    "id": ("karena", "maka"), "qu": ("imataq", "chaymi"), "sw": ("kwa sababu", "kwa hiyo"),
    "zh": ("因为", "所以"), "ta": ("காரணமாக", "எனவே"), "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"), "vi": ("bởi vì", "vì vậy"), "en": ("because", "therefore"),
}  # fmt: skip
LANGUAGES = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def read_items(path: Path, lang: str) -> list[dict]:
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question = field(record, "question", where)
        if question not in ("cause", "effect"):
            raise EvalDataError(f"{where}: question must be 'cause' or 'effect', got "
                                f"{question!r}")
        label = int(field(record, "label", where))
        if label not in (0, 1):
            raise EvalDataError(f"{where}: label must be 0 or 1, got {label}")
        cause, effect = CONNECTORS[lang]
        premise = field(record, "premise", where).strip()
        context = premise[:-1] + " " + (cause if question == "cause" else effect)
        choices = (" " + _lower_first(field(record, "choice1", where)),
                   " " + _lower_first(field(record, "choice2", where)))
        items.append({"id": str(record.get("idx", number - 1)), "context": context,
                      "choices": choices, "gold": label})
    return items


def load(data_root: Path, *, path: str = "benchmarks/xcopa",
         languages: Sequence[str] = LANGUAGES, split: str = "val", shots: int = 5,
         seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        if lang not in CONNECTORS:
            raise EvalDataError(f"xcopa: no connectors for language {lang!r}; have "
                                f"{sorted(CONNECTORS)}")
        raw = read_items(directory / lang / f"{split}.{lang}.jsonl", lang)
        header = f"Choose the more plausible continuation of each {language_name(lang)} sentence."
        items = []
        for i, item in enumerate(raw):
            demos = [raw[j]["context"] + raw[j]["choices"][raw[j]["gold"]]
                     for j in pick_shots(len(raw), shots, exclude=[i], seed=seed,
                                         salt=f"xcopa/{lang}/{i}")]
            items.append(ChoiceItem(f"{lang}/{item['id']}",
                                    few_shot_prompt(header, demos, item["context"]),
                                    item["choices"], item["gold"]))
        subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("xcopa", "choice", "acc", tuple(subsets),
                    settings={"shots": shots, "split": split})
