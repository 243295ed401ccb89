"""MMLU-style exams (4 lettered options, scored on the letter), 5-shot, acc:

- `mmlu`: English MMLU (hendrycks/test CSVs `test/<subject>_test.csv`, shots from
  `dev/<subject>_dev.csv`; no header: question, A, B, C, D, answer): watches for forgetting.
- `mmmlu`: OpenAI MMMLU, one CSV per locale `mmlu_<LOCALE>.csv` (header: index, Question, A, B,
  C, D, Answer, Subject); only a test split exists, so demonstrations are other items of the same
  subject in the same file.
- `cmmlu`: CMMLU `<split>/<subject>.csv` (header: index, Question, A, B, C, D, Answer), shots from
  `dev/`.
- `ceval`: C-Eval `val/<subject>_val.csv`, shots from `dev/<subject>_dev.csv` (header: id,
  question, A, B, C, D, answer[, explanation]).

Prompts follow lm-eval's templates for each (English "Answer:", Chinese "答案："), under a header
that names the subject and, for MMMLU, the language.
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
    letter_index,
    pick_shots,
    read_csv_rows,
    require_file,
    resolve,
)
from marco_jax.evals.tasks.languages import language_name

LETTERS = ("A", "B", "C", "D")
MMMLU_LOCALES: dict[str, str] = {
    "ar": "AR_XY", "bn": "BN_BD", "de": "DE_DE", "es": "ES_LA", "fr": "FR_FR", "hi": "HI_IN",
    "id": "ID_ID", "it": "IT_IT", "ja": "JA_JP", "ko": "KO_KR", "pt": "PT_BR", "sw": "SW_KE",
    "yo": "YO_NG", "zh": "ZH_CN",
}  # fmt: skip


def _question(where: str, subject: str, question: str, options: Sequence[str], answer: str,
              qid: str) -> dict:
    if len(options) != 4:
        raise EvalDataError(f"{where}: expected 4 options, got {len(options)}")
    return {"id": qid, "subject": subject, "question": question.strip(),
            "options": [str(o).strip() for o in options],
            "gold": letter_index(answer, 4, where)}


def _render(q: dict, answer_cue: str) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q["options"],
                                                                    strict=True))
    return f"{q['question']}\n{options}\n{answer_cue}"


def exam_items(questions: Sequence[dict], pools: dict[str, Sequence[dict]], *, header: str,
               answer_cue: str, shots: int, seed: int, salt: str) -> tuple[ChoiceItem, ...]:
    """One ChoiceItem per question; demonstrations from `pools[subject]` (when the pool is the
    evaluated list itself, the item is excluded). `header` may use {subject}."""
    items = []
    for i, q in enumerate(questions):
        pool = pools.get(q["subject"], ())
        exclude = [j for j, p in enumerate(pool) if p is q]
        demos = [_render(pool[j], answer_cue) + " " + LETTERS[pool[j]["gold"]]
                 for j in pick_shots(len(pool), shots, exclude=exclude, seed=seed,
                                     salt=f"{salt}/{i}")]
        text = header.format(subject=q["subject"].replace("_", " "))
        items.append(ChoiceItem(f"{salt}/{q['id']}",
                                few_shot_prompt(text, demos, _render(q, answer_cue)),
                                tuple(" " + letter for letter in LETTERS), q["gold"]))
    return tuple(items)


def _by_subject(questions: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for q in questions:
        out.setdefault(q["subject"], []).append(q)
    return out


def _subjects(directory: Path, suffix: str, subjects: Sequence[str] | None) -> list[str]:
    if subjects:
        return list(subjects)
    found = sorted(p.name[: -len(suffix)] for p in directory.glob(f"*{suffix}"))
    if not found:
        raise EvalDataError(f"{directory}: no *{suffix} files")
    return found


# --- English MMLU ---------------------------------------------------------------------------


def _read_headerless(path: Path, subject: str) -> list[dict]:
    out = []
    for number, row in enumerate(read_csv_rows(path, header=False), 1):
        if len(row) != 6:
            raise EvalDataError(f"{path}:{number}: expected 6 fields (question, A-D, answer), "
                                f"got {len(row)}")
        out.append(_question(f"{path}:{number}", subject, row[0], row[1:5], row[5],
                             f"{subject}/{number - 1}"))
    return out


def load_mmlu(data_root: Path, *, path: str = "benchmarks/mmlu", split: str = "test",
              subjects: Sequence[str] | None = None, shots: int = 5, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    questions, pools = [], {}
    for subject in _subjects(directory / split, f"_{split}.csv", subjects):
        questions += _read_headerless(
            require_file(directory / split / f"{subject}_{split}.csv", "MMLU file"), subject)
        dev = directory / "dev" / f"{subject}_dev.csv"
        pools[subject] = _read_headerless(dev, subject) if dev.is_file() else []
    if not any(pools.values()):
        pools = _by_subject(questions)
    header = "The following are multiple choice questions (with answers) about {subject}."
    items = exam_items(questions, pools, header=header, answer_cue="Answer:", shots=shots,
                       seed=seed, salt="en")
    return TaskData("mmlu", "choice", "acc", (Subset("en", "en", items),),
                    settings={"shots": shots, "split": split})


# --- MMMLU ----------------------------------------------------------------------------------


def _read_mmmlu(path: Path) -> list[dict]:
    out = []
    for number, row in enumerate(read_csv_rows(path, header=True), 2):
        where = f"{path}:{number}"
        options = [field(row, letter, where) for letter in LETTERS]
        out.append(_question(where, field(row, "Subject", where), field(row, "Question", where),
                             options, field(row, "Answer", where), str(number - 2)))
    return out


def load_mmmlu(data_root: Path, *, path: str = "benchmarks/mmmlu",
               languages: Sequence[str] = tuple(MMMLU_LOCALES), shots: int = 5,
               seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    subsets = []
    for lang in languages:
        if lang not in MMMLU_LOCALES:
            raise EvalDataError(f"mmmlu: no locale for language {lang!r}; have "
                                f"{sorted(MMMLU_LOCALES)}")
        name = f"mmlu_{MMMLU_LOCALES[lang]}.csv"
        file = directory / name if (directory / name).is_file() else directory / "test" / name
        questions = _read_mmmlu(require_file(file, "MMMLU locale file"))
        header = (f"The following are multiple choice questions (with answers) about "
                  f"{{subject}}, in {language_name(lang)}.")
        items = exam_items(questions, _by_subject(questions), header=header,
                           answer_cue="Answer:", shots=shots, seed=seed, salt=lang)
        subsets.append(Subset(lang, lang, items))
    return TaskData("mmmlu", "choice", "acc", tuple(subsets),
                    settings={"shots": shots, "split": "test"})


# --- Chinese exams --------------------------------------------------------------------------


def _read_chinese_exam(path: Path, subject: str, keys: tuple[str, ...]) -> list[dict]:
    question_key, answer_key = keys
    out = []
    for number, row in enumerate(read_csv_rows(path, header=True), 2):
        where = f"{path}:{number}"
        options = [field(row, letter, where) for letter in LETTERS]
        out.append(_question(where, subject, field(row, question_key, where), options,
                             field(row, answer_key, where), f"{subject}/{number - 2}"))
    return out


def _chinese_exam(name: str, directory: Path, split: str, subjects: Sequence[str] | None,
                  suffixes: tuple[str, str], keys: tuple[str, str], header: str, shots: int,
                  seed: int) -> TaskData:
    eval_suffix, dev_suffix = suffixes
    questions, pools = [], {}
    for subject in _subjects(directory / split, eval_suffix, subjects):
        file = require_file(directory / split / f"{subject}{eval_suffix}", f"{name} file")
        evaluated = _read_chinese_exam(file, subject, keys)
        questions += evaluated
        if split == "dev":  # the shots' own split: demonstrations are the other dev items
            pools[subject] = evaluated
        else:
            dev = require_file(directory / "dev" / f"{subject}{dev_suffix}", f"{name} dev file")
            pools[subject] = _read_chinese_exam(dev, subject, keys)
    items = exam_items(questions, pools, header=header, answer_cue="答案：", shots=shots,
                       seed=seed, salt="zh")
    return TaskData(name, "choice", "acc", (Subset("zh", "zh", items),),
                    settings={"shots": shots, "split": split})


def load_cmmlu(data_root: Path, *, path: str = "benchmarks/cmmlu", split: str = "test",
               subjects: Sequence[str] | None = None, shots: int = 5, seed: int = 0
               ) -> TaskData:
    return _chinese_exam("cmmlu", resolve(data_root, path), split, subjects, (".csv", ".csv"),
                         ("Question", "Answer"),
                         "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。", shots, seed)


def load_ceval(data_root: Path, *, path: str = "benchmarks/ceval", split: str = "val",
               subjects: Sequence[str] | None = None, shots: int = 5, seed: int = 0
               ) -> TaskData:
    header = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。"
    return _chinese_exam("ceval", resolve(data_root, path), split, subjects,
                         (f"_{split}.csv", "_dev.csv"), ("question", "answer"), header, shots,
                         seed)
