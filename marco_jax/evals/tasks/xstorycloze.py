"""XStoryCloze (story endings, 2 alternatives), val split, 5-shot, acc.

Reads the published TSVs `spring2016.val.<lang>.tsv.split_20_80_eval.tsv` (evaluated) and
`..._train.tsv` (demonstrations; without it, other items of the evaluated file), header
InputStoryid, InputSentence1..4, RandomFifthSentenceQuiz1/2, AnswerRightEnding (1 or 2). The prompt
is lm-eval's: the four sentences, then each ending.
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
    read_csv_rows,
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

LANGUAGES = ("en", "ru", "zh", "es", "ar", "hi", "id", "te", "sw", "eu", "my")


def read_stories(path: Path) -> list[dict]:
    stories = []
    for number, row in enumerate(read_csv_rows(path, header=True, delimiter="\t"), 2):
        where = f"{path}:{number}"
        context = " ".join(field(row, f"InputSentence{k}", where).strip() for k in range(1, 5))
        answer = field(row, "AnswerRightEnding", where).strip()
        if answer not in ("1", "2"):
            raise EvalDataError(f"{where}: AnswerRightEnding must be 1 or 2, got {answer!r}")
        endings = tuple(" " + field(row, f"RandomFifthSentenceQuiz{k}", where).strip()
                        for k in (1, 2))
        stories.append({"id": field(row, "InputStoryid", where), "context": context,
                        "choices": endings, "gold": int(answer) - 1})
    return stories


def load(data_root: Path, *, path: str = "benchmarks/xstorycloze",
         languages: Sequence[str] = LANGUAGES, shots: int = 5, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        stem = f"spring2016.val.{lang}.tsv.split_20_80"
        stories = read_stories(directory / f"{stem}_eval.tsv")
        train_file = directory / f"{stem}_train.tsv"
        pool = read_stories(train_file) if train_file.is_file() else stories
        header = f"Choose the right ending of each {language_name(lang)} story."
        items = []
        for i, story in enumerate(stories):
            exclude = [] if pool is not stories else [i]
            demos = [pool[j]["context"] + pool[j]["choices"][pool[j]["gold"]]
                     for j in pick_shots(len(pool), shots, exclude=exclude, seed=seed,
                                         salt=f"xstorycloze/{lang}/{i}")]
            items.append(ChoiceItem(f"{lang}/{story['id']}",
                                    few_shot_prompt(header, demos, story["context"]),
                                    story["choices"], story["gold"]))
        subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("xstorycloze", "choice", "acc", tuple(subsets),
                    settings={"shots": shots, "split": "val"})
