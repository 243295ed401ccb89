"""Machine translation, 1-shot, BLEU and chrF++ (sacrebleu, corpus level; spBLEU when a
SentencePiece model file is given):

- `flores`: FLORES-200 English-centric, en->xx and xx->en for each configured language.
- `flores_any`: FLORES-200 any-to-any: every ordered pair of the configured (non-English)
  languages, e.g. 7 languages -> the paper's 42 directions.
- `wmt16`: WMT16 news test sets, SGML (`<testset>-<st>-src.<s>.sgm` / `-ref.<t>.sgm`, as released)
  or plain line-aligned text (`<testset>.<s>-<t>.<s>` / `.<t>`).

FLORES reads `<dir>/<split>/<flores_code>.<split>` (one sentence per line, multi-way parallel).
The prompt names both languages ("Translate the following Kazakh text to English:"), shows one
demonstration pair (another line of the same split) and the model translates up to the newline.
"""

from __future__ import annotations

import itertools
import re
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
    require_file,
    resolve,
)
from marco_jax.evals.tasks.languages import flores_code, language_name

# The paper's English-centric FLORES languages (its 28 non-English ones we have codes for).
FLORES_LANGUAGES = ("zh", "ar", "de", "es", "fr", "ko", "ja", "pt", "tr", "bn", "he", "id", "it",
                    "ms", "nl", "pl", "ru", "th", "uk", "ur", "vi", "cs", "el", "hu", "kk", "ro",
                    "az", "ne")
ANY_TO_ANY_LANGUAGES = ("zh", "ja", "ko", "ar", "de", "fr", "es")  # 7 -> 42 directions
WMT16_PAIRS = ("de-en", "ro-en", "tr-en")
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def read_lines(path: Path) -> list[str]:
    return require_file(path, "sentence file").read_text(encoding="utf-8").splitlines()


def read_sgm(path: Path) -> list[str]:
    """The segments of a WMT SGML file, read as sacrebleu reads them (no entity unescaping)."""
    segments = []
    for line in require_file(path, "SGML file").read_text(encoding="utf-8").splitlines():
        match = _SEG.search(line)
        if match:
            segments.append(" ".join(match.group(1).split()))
    return segments


def instruction(source: str, target: str) -> str:
    return f"Translate the following {language_name(source)} text to {language_name(target)}:"


def render(source: str, target: str, text: str) -> str:
    return f"{language_name(source)}: {text.strip()}\n{language_name(target)}:"


def direction_subset(source: str, target: str, sources: Sequence[str], targets: Sequence[str],
                     *, shots: int, seed: int, salt: str) -> Subset:
    if len(sources) != len(targets):
        raise EvalDataError(f"{salt}: {len(sources)} source lines but {len(targets)} target "
                            "lines (files must be line-aligned)")
    items = []
    for i, (src, ref) in enumerate(zip(sources, targets, strict=True)):
        demos = [render(source, target, sources[j]) + " " + targets[j].strip()
                 for j in pick_shots(len(sources), shots, exclude=[i], seed=seed,
                                     salt=f"{salt}/{i}")]
        items.append(GenerationItem(f"{source}-{target}/{i}",
                                    few_shot_prompt(instruction(source, target), demos,
                                                    render(source, target, src)),
                                    (ref.strip(),)))
    key = f"{source}-{target}"
    return Subset(key, key, tuple(items))


def make_scorer(spm_model: str):
    def score(predictions: Sequence[str], items: Sequence[GenerationItem], subset: Subset
              ) -> dict[str, float]:
        target = subset.language.split("-")[1]
        return metrics.translation_scores([p.strip() for p in predictions],
                                          [item.references[0] for item in items],
                                          target_language=target, spm_model=spm_model or None)
    return score


def _flores_lines(directory: Path, split: str, lang: str) -> list[str]:
    return read_lines(directory / split / f"{flores_code(lang)}.{split}")


def _translation_task(name: str, directions: Sequence[tuple[str, str]], lines, *, shots: int,
                      seed: int, spm_model: str, max_new_tokens: int, settings: dict) -> TaskData:
    subsets = tuple(direction_subset(s, t, lines(s), lines(t), shots=shots, seed=seed,
                                     salt=f"{name}/{s}-{t}") for s, t in directions)
    return TaskData(name, "generate", "bleu", subsets, grouping="direction",
                    max_new_tokens=max_new_tokens, stop=("\n",), scorer=make_scorer(spm_model),
                    settings={"shots": shots, **settings})


def load_flores(data_root: Path, *, path: str = "benchmarks/flores200", split: str = "devtest",
                languages: Sequence[str] = FLORES_LANGUAGES, directions: str = "both",
                shots: int = 1, spm_model: str = "", max_new_tokens: int = 256,
                seed: int = 0) -> TaskData:
    if directions not in ("both", "en-xx", "xx-en"):
        raise EvalDataError(f"flores: directions must be both, en-xx or xx-en, got "
                            f"{directions!r}")
    directory = resolve(data_root, path)
    pairs = []
    for lang in languages:
        if directions in ("both", "en-xx"):
            pairs.append(("en", lang))
        if directions in ("both", "xx-en"):
            pairs.append((lang, "en"))
    cache: dict[str, list[str]] = {}

    def lines(lang: str) -> list[str]:
        return cache.setdefault(lang, _flores_lines(directory, split, lang))

    return _translation_task("flores", pairs, lines, shots=shots, seed=seed, spm_model=spm_model,
                             max_new_tokens=max_new_tokens, settings={"split": split})


def load_flores_any(data_root: Path, *, path: str = "benchmarks/flores200",
                    split: str = "devtest", languages: Sequence[str] = ANY_TO_ANY_LANGUAGES,
                    shots: int = 1, spm_model: str = "", max_new_tokens: int = 256,
                    seed: int = 0) -> TaskData:
    if "en" in languages:
        raise EvalDataError("flores_any: languages are the non-English ones (English-centric "
                            "directions are the flores task)")
    directory = resolve(data_root, path)
    cache: dict[str, list[str]] = {}

    def lines(lang: str) -> list[str]:
        return cache.setdefault(lang, _flores_lines(directory, split, lang))

    pairs = list(itertools.permutations(languages, 2))
    return _translation_task("flores_any", pairs, lines, shots=shots, seed=seed,
                             spm_model=spm_model, max_new_tokens=max_new_tokens,
                             settings={"split": split, "languages": list(languages)})


def _wmt_files(directory: Path, testset: str, source: str, target: str) -> tuple[list[str],
                                                                                  list[str]]:
    sgm_src = directory / f"{testset}-{source}{target}-src.{source}.sgm"
    sgm_ref = directory / f"{testset}-{source}{target}-ref.{target}.sgm"
    if sgm_src.is_file():
        return read_sgm(sgm_src), read_sgm(sgm_ref)
    plain = directory / f"{testset}.{source}-{target}"
    if Path(f"{plain}.{source}").is_file():
        return read_lines(Path(f"{plain}.{source}")), read_lines(Path(f"{plain}.{target}"))
    raise EvalDataError(f"wmt16: neither {sgm_src} nor {plain}.{source} exists")


def load_wmt16(data_root: Path, *, path: str = "benchmarks/wmt16", testset: str = "newstest2016",
               pairs: Sequence[str] = WMT16_PAIRS, shots: int = 1, spm_model: str = "",
               max_new_tokens: int = 256, seed: int = 0) -> TaskData:
    directory = resolve(data_root, path)
    directions = []
    for pair in pairs:
        parts = pair.split("-")
        if len(parts) != 2 or not all(parts):
            raise EvalDataError(f"wmt16: pair {pair!r} is not <source>-<target>")
        directions.append((parts[0], parts[1]))
    files = {d: _wmt_files(directory, testset, *d) for d in directions}

    subsets = tuple(direction_subset(s, t, *files[(s, t)], shots=shots, seed=seed,
                                     salt=f"wmt16/{s}-{t}") for s, t in directions)
    return TaskData("wmt16", "generate", "bleu", subsets, grouping="direction",
                    max_new_tokens=max_new_tokens, stop=("\n",), scorer=make_scorer(spm_model),
                    settings={"shots": shots, "testset": testset})
