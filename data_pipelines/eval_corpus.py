"""A labelled evaluation corpus: genuine web sentences (Leipzig Wortschatz, from shared/data/text)
grouped into documents, mixed with generated junk of known kinds, plus deliberately broken lines.

Each JSONL record carries gold fields the pipeline ignores: `gold_lang`, `gold_kind`
("clean" or a junk kind) and, for duplicates, `dup_of` (+ `jaccard` of word 5-gram shingles).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_pipelines.minhash import jaccard, shingles

JUNK_KINDS = ("boilerplate", "repeated_lines", "keyword_spam", "wrong_language", "too_short",
              "code_switched", "near_duplicate", "exact_duplicate")
NO_SPACE = ("zh", "ja")  # scripts written without spaces between sentences
BROKEN_LINES = (  # (raw bytes, expected malformed reason)
    (b'{"text": "unterminated', "bad_json"),
    (b'{"text": "caf\xe9 au lait"}', "bad_encoding"),
    (b'{"id": "x1", "body": "no text field here"}', "missing_text"),
    (b'["a", "list", "not", "an", "object"]', "not_an_object"),
    (b'{"text": 12345}', "bad_text_type"),
    (b"", "empty_line"),
    (b"\xff\xfe\x00garbage", "bad_encoding"),
)
_BOILER = ["Home", "About us", "Contact", "Login | Register", "Privacy Policy", "Terms of Use",
           "Share on Facebook", "Tweet", "Cookie settings", "Accept all cookies", "Menu",
           "Search", "Next page »", "« Previous", "Copyright © 2024 All rights reserved",
           "Subscribe to our newsletter", "Skip to content", "Sitemap", "FAQ", "Careers"]
_SPAM = ["cheap", "best price", "buy now", "free shipping", "discount", "casino", "bonus",
         "online", "replica watches", "loans", "win", "click here"]


def load_sentences(text_dir: Path, lang: str) -> list[str]:
    path = Path(text_dir) / "leipzig_sentences" / f"{lang}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no Leipzig sentences for {lang!r}: {path}")
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _join(sents: list[str], lang: str) -> str:
    return ("" if lang in NO_SPACE else " ").join(sents)


def make_document(sents: list[str], lang: str, rng: random.Random) -> str:
    """Sentences -> paragraphs of 1-3 sentences, one paragraph per line (extracted-web layout)."""
    paras, i = [], 0
    while i < len(sents):
        k = rng.randint(1, 3)
        paras.append(_join(sents[i:i + k], lang))
        i += k
    return "\n".join(paras)


def _edit(text: str, lang: str, rng: random.Random, rate: float) -> str:
    """Small edits: change ~rate of the words (or characters for zh/ja) by replace/drop/dup."""
    units = list(text) if lang in NO_SPACE else text.split(" ")
    out = []
    for u in units:
        r = rng.random()
        if r < rate / 3:
            continue
        out.append(u)
        if r < 2 * rate / 3:
            out.append(u)
        elif r < rate:
            out[-1] = u[::-1]
    return ("" if lang in NO_SPACE else " ").join(out)


def build_corpus(text_dir: Path, languages: list[str], docs_per_lang: int, junk_per_kind: int,
                 wrong_languages: list[str], seed: int = 0,
                 sentences_per_doc: tuple[int, int] = (8, 14)) -> list[dict]:
    rng = random.Random(seed)
    pools = {lang: load_sentences(text_dir, lang) for lang in [*languages, *wrong_languages]}
    for pool in pools.values():
        rng.shuffle(pool)
    cursor = dict.fromkeys(pools, 0)

    def take(lang: str, n: int) -> list[str]:
        start = cursor[lang]
        if start + n > len(pools[lang]):
            raise ValueError(f"not enough {lang} sentences for the requested corpus size")
        cursor[lang] = start + n
        return pools[lang][start:start + n]

    def n_sents(lang: str) -> int:  # zh/ja lines already hold several sentences
        lo, hi = sentences_per_doc
        return max(3, rng.randint(lo, hi) // (3 if lang in NO_SPACE else 1))

    recs: list[dict] = []

    def add(text: str, lang: str, kind: str, **extra) -> dict:
        rec = {"id": f"{kind}-{lang}-{len(recs)}", "text": text, "url": f"https://example.org/{len(recs)}",
               "gold_lang": lang, "gold_kind": kind, **extra}
        recs.append(rec)
        return rec

    clean: list[dict] = []
    for lang in languages:
        for _ in range(docs_per_lang):
            clean.append(add(make_document(take(lang, n_sents(lang)), lang, rng), lang, "clean"))
    for i in range(junk_per_kind):
        lang = languages[i % len(languages)]
        lines = rng.sample(_BOILER, 12) + [rng.choice(take(lang, 1))]
        rng.shuffle(lines)
        add("\n".join(lines), lang, "boilerplate")
        s = take(lang, 3)
        add("\n".join([s[0], s[1], s[2]] * rng.randint(5, 9)), lang, "repeated_lines")
        words = [rng.choice(_SPAM) for _ in range(12)]
        add(_join(take(lang, 1), lang) + "\n" + " ".join(words * 8), lang, "keyword_spam")
        wl = wrong_languages[i % len(wrong_languages)]
        add(make_document(take(wl, n_sents(wl)), wl, rng), wl, "wrong_language")
        add(_join(take(lang, 1), lang), lang, "too_short")
        other = languages[(i + 1) % len(languages)]
        mixed = [x for pair in zip(take(lang, 5), take(other, 5), strict=True) for x in pair]
        add("\n".join(mixed), lang, "code_switched", other_lang=other)
    for i in range(junk_per_kind * 2):
        orig = clean[(i * 7) % len(clean)]
        lang = orig["gold_lang"]
        rate = (0.005, 0.01, 0.02, 0.05)[i % 4]
        text = _edit(orig["text"], lang, rng, rate)
        j = jaccard(shingles(orig["text"], lang, 5), shingles(text, lang, 5))
        add(text, lang, "near_duplicate", dup_of=orig["id"], jaccard=round(j, 4))
    for i in range(junk_per_kind):
        orig = clean[(i * 11 + 3) % len(clean)]
        add(orig["text"].replace(" ", "  ", 1) + "\n", orig["gold_lang"], "exact_duplicate",
            dup_of=orig["id"])
    return recs


def write_corpus(recs: list[dict], path: Path, broken: bool = True, seed: int = 0) -> int:
    """Writes JSONL (records shuffled, broken lines interleaved); returns the number of lines."""
    rng = random.Random(seed + 1)
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in recs]
    rng.shuffle(lines)
    if broken:
        for raw, _ in BROKEN_LINES:
            lines.insert(rng.randrange(len(lines) + 1), raw)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = b"\n".join(lines) + b"\n"
    if str(path).endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    Path(path).write_bytes(data)
    return len(lines)
