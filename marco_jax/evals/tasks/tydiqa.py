"""TyDi QA GoldP (extractive QA), 1-shot, F1 / exact match (official SQuAD v1.1 script).

Reads the SQuAD-1.1 JSON of the GoldP task (data[].paragraphs[].{context, qas[].{id, question,
answers[].text}}): per language as XTREME publishes it, `<dir>/tydiqa.goldp.<lang>.<split>.json`,
or else the official all-language file `<dir>/tydiqa-goldp-v1.1-<split>.json`, whose question ids
start with the language's English name ("swahili-..."). The model generates
the answer after "Answer:" up to the end of the line; the demonstration is another question of
the same file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from marco_jax.evals import metrics
from marco_jax.evals.tasks.base import (
    EvalDataError,
    GenerationItem,
    Subset,
    TaskData,
    few_shot_prompt,
    field,
    pick_shots,
    require_file,
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

LANGUAGES = ("en", "ar", "bn", "fi", "id", "ko", "ru", "sw", "te")


def read_squad(path: Path, id_prefix: str = "") -> tuple[list[dict], int]:
    """([{id, context, question, answers}], questions dropped for having no non-empty answer);
    only the questions whose id starts with `id_prefix`."""
    try:
        data = json.loads(require_file(path, "SQuAD json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{path}: not JSON ({e.msg})") from None
    out, unanswerable = [], 0
    for article in field(data, "data", str(path)):
        for paragraph in field(article, "paragraphs", str(path)):
            context = field(paragraph, "context", str(path))
            for qa in field(paragraph, "qas", str(path)):
                if not str(qa.get("id", "")).startswith(id_prefix):
                    continue
                answers = tuple(a["text"] for a in field(qa, "answers", f"{path} {qa.get('id')}")
                                if a["text"].strip())
                if not answers:  # XTREME's dev files blank their answers: nothing to score
                    unanswerable += 1
                    continue
                out.append({"id": str(field(qa, "id", str(path))), "context": context,
                            "question": field(qa, "question", str(path)), "answers": answers})
    return out, unanswerable


def render(q: dict) -> str:
    return f"Passage: {q['context'].strip()}\nQuestion: {q['question'].strip()}\nAnswer:"


def score(predictions: Sequence[str], items: Sequence[GenerationItem], subset: Subset
          ) -> dict[str, float]:
    return metrics.squad_scores([p.strip() for p in predictions],
                                [item.references for item in items])


def load(data_root: Path, *, path: str = "benchmarks/tydiqa_goldp",
         languages: Sequence[str] = LANGUAGES, split: str = "dev", shots: int = 1,
         max_new_tokens: int = 32, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets, dropped = [], {}
    for lang in languages:
        per_language = directory / f"tydiqa.goldp.{lang}.{split}.json"
        if per_language.is_file():
            questions, unanswerable = read_squad(per_language)
        else:
            questions, unanswerable = read_squad(directory / f"tydiqa-goldp-v1.1-{split}.json",
                                                 f"{language_name(lang).lower()}-")
            if not questions:
                raise EvalDataError(f"{directory}: neither {per_language.name} nor questions "
                                    f"with ids '{language_name(lang).lower()}-...' in "
                                    f"tydiqa-goldp-v1.1-{split}.json")
        if unanswerable:
            dropped["no gold answer"] = dropped.get("no gold answer", 0) + unanswerable
        header = (f"Answer each question about a {language_name(lang)} passage with a short "
                  f"span copied from the passage, in {language_name(lang)}.")
        items = []
        for i, q in enumerate(questions):
            demos = [render(questions[j]) + " " + questions[j]["answers"][0]
                     for j in pick_shots(len(questions), shots, exclude=[i], seed=seed,
                                         salt=f"tydiqa/{lang}/{i}")]
            items.append(GenerationItem(f"{lang}/{q['id']}",
                                        few_shot_prompt(header, demos, render(q)), q["answers"]))
        if items:
            subsets.append(Subset(lang, lang, tuple(items)))
    return TaskData("tydiqa", "generate", "f1", tuple(subsets), max_new_tokens=max_new_tokens,
                    stop=("\n",), scorer=score, dropped=dropped,
                    settings={"shots": shots, "split": split})
