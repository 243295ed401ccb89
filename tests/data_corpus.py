"""Builds a small multilingual corpus tree (the layout `marco_jax.data.tasks` reads) in a temp dir
from the genuine texts in ../shared/data, at test time (nothing is copied into the repository).

web/<lang>.jsonl       Leipzig sentences (FLORES dev for Nepali) grouped into documents of 1-12
                       sentences, plus a few very long documents (to exercise chunking)
bitext/en-<x>.jsonl    NTREX-128 English/<x> line pairs
knowledge.jsonl        MGSM English questions with answers
synthetic.jsonl        XCOPA English premises
sft/chat.jsonl         MGSM questions as user/assistant conversations
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from marco_jax.data import languages as L

NTREX_CODES = {
    "zh": "zho_Hans", "ar": "arb", "de": "deu", "es": "spa", "fr": "fra", "ko": "kor",
    "ja": "jpn", "pt": "por", "tr": "tur", "bn": "ben", "he": "heb", "id": "ind", "it": "ita",
    "ms": "msa", "nl": "nld", "pl": "pol", "ru": "rus", "th": "tha", "uk": "ukr", "ur": "urd",
    "vi": "vie", "cs": "ces", "el": "ell", "hu": "hun", "kk": "kaz", "ro": "ron",
    "az": "aze-Latn", "ne": "nep",
}  # fmt: skip


def _sentences(shared: Path, lang: str) -> list[str]:
    if lang == "ne":
        path = shared / "benchmarks" / "flores200" / "dev" / "npi_Deva.dev"
    else:
        path = shared / "text" / "leipzig_sentences" / f"{lang}.txt"
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_corpus(root: Path, shared: Path, docs_per_language: int = 40,
                 pairs_per_language: int = 60) -> Path:
    rng = random.Random(0)
    for lang in L.LANGUAGES:
        sents = _sentences(shared, lang)
        docs, k = [], 0
        for d in range(docs_per_language):
            n = 60 if d % 25 == 24 else rng.randint(1, 12)  # every 25th document is long
            docs.append({"text": " ".join(sents[(k + i) % len(sents)] for i in range(n))})
            k += n
        _write_jsonl(root / "web" / f"{lang}.jsonl", docs)
    ntrex = shared / "bitext" / "ntrex128" / "NTREX-128"
    english = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    for lang, code in NTREX_CODES.items():
        other = (ntrex / f"newstest2019-ref.{code}.txt").read_text(encoding="utf-8").splitlines()
        pairs = [{"src": a, "tgt": b} for a, b in zip(english, other, strict=False)
                 if a.strip() and b.strip()][:pairs_per_language]
        _write_jsonl(root / "bitext" / f"en-{lang}.jsonl", pairs)
    mgsm = [line.split("\t") for line in
            (shared / "benchmarks" / "mgsm" / "mgsm_en.tsv").read_text("utf-8").splitlines()]
    _write_jsonl(root / "knowledge.jsonl",
                 [{"text": f"Question: {q}\nAnswer: {a}"} for q, a in mgsm])
    xcopa = (shared / "benchmarks" / "xcopa" / "en" / "val.en.jsonl")
    if not xcopa.exists():
        xcopa = next((shared / "benchmarks" / "xcopa").glob("*/val.*.jsonl"))
    premises = [json.loads(x)["premise"] for x in xcopa.read_text("utf-8").splitlines() if x]
    _write_jsonl(root / "synthetic.jsonl", [{"text": p} for p in premises])
    _write_jsonl(root / "sft" / "chat.jsonl", [
        {"messages": [{"role": "user", "content": q},
                      {"role": "assistant", "content": f"The answer is {a}."}]}
        for q, a in mgsm])
    return root
