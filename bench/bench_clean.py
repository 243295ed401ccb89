"""Cleaning-pipeline benchmark and quality measurement.

  python bench/bench_clean.py quality [--docs_per_lang 20] [--out /tmp/clean_quality]
      builds a labelled corpus from ../shared/data/text (real sentences in 28 Marco languages,
      Nepali is absent there) mixed with generated junk, runs the Beam pipeline, prints LID
      accuracy per language and junk precision/recall per filter as Markdown; then the keep
      rates of genuine Malay / Indonesian documents (FLORES-200 dev, NTREX-128) with lid.176
      alone and with the ms/id second opinion.
  flock /tmp/bench.lock python bench/bench_clean.py speed [--docs 1500]
      documents/s per core on the same input and the same filter set (normalise -> LID -> Gopher
      repetition -> FineWeb quality -> Gopher quality -> MinHash dedup): our Beam pipeline on the
      DirectRunner vs datatrove's LocalPipelineExecutor (its stock word tokenizers), each with 1
      worker (per core = documents / wall s / workers), after a warm-up that loads both engines'
      LID models and tokenizers.

Measured (2 shared cores; data_pipelines/README.md has the full tables):

  speed, 1565 documents          Beam DirectRunner     datatrove
  before                         29.9 s   52.4 docs/s  14.3 s  109.1 docs/s
  after (run 1)                  10.0 s  156.3 docs/s  10.9 s  143.3 docs/s
  after (run 2)                  11.3 s  138.8 docs/s  11.9 s  131.0 docs/s

  ms/id (8-sentence documents)   labelled right  kept under own language
                                 lid.176 / +lingua  lid.176 / +lingua
  FLORES-200 dev ms (124)        0.24 / 0.99     0.00 / 0.96
  FLORES-200 dev id (124)        1.00 / 0.98     0.95 / 0.94
  NTREX-128 ms (249)             0.17 / 0.97     0.00 / 0.90
  NTREX-128 id (249)             1.00 / 0.99     0.94 / 0.94
  Leipzig "ms" (24, mostly Indonesian-style text)  LID 0.000 -> 0.125, kept (any) 0.40 -> 0.45
  Junk recall per kind unchanged (boilerplate, keyword spam, repeated lines, too short, wrong
  language 1.000; code-switched 0.429); lid precision 0.912 -> 1.000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MARCO_SHARED_DATA", REPO.parent / "shared" / "data"))

from data_pipelines.languages import MARCO_LANGUAGES  # noqa: E402

WORKERS = 1
SAME_AND_DIFFERENT = """
Same on both sides: input file, normalize_text, lid.176.ftz at 0.65 for the 29 languages, the
three datatrove filters with the same per-language kwargs (data_pipelines.quality.QualityFilters),
MinHash 14 bands x 8 rows over word 5-grams, xxhash-64 + datatrove's hash functions.
Different: datatrove runs its stock word tokenizers (spaCy + sentencizer + memory_zone) and
shingles every document with one Unicode-rule tokenizer (its signature step takes one language
per job); ours runs FastSpaCyTokenizer (same tokens) and shingles with the words the quality
filters used; Beam also runs the ms/id second opinion, counts whitespace tokens, writes
TFRecord + JSONL shards and report.json; datatrove runs its 4 MinHash stages as separate
executor runs (14 bucket tasks) and writes JSONL."""
EVAL_LANGS = [lang for lang in MARCO_LANGUAGES if lang != "ne"]  # no Nepali in Leipzig
WRONG = ["sv", "fi", "hr", "lt", "sk", "da", "et", "sq"]


def run_quality(args) -> dict:
    from data_pipelines import clean_web
    from data_pipelines.eval_corpus import build_corpus, write_corpus
    from data_pipelines.evaluate import evaluate, markdown
    from data_pipelines.runs import read_jsonl_shards

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    recs = build_corpus(SHARED / "text", EVAL_LANGS, args.docs_per_lang, args.junk_per_kind, WRONG,
                        seed=args.seed)
    write_corpus(recs, out / "raw" / "corpus.jsonl.gz", seed=args.seed)
    t0 = time.time()
    report = clean_web.main(["--input", str(out / "raw" / "*"), "--output", str(out / "clean"),
                             "--languages", ",".join(MARCO_LANGUAGES), "--token_counter", "qwen2",
                             "--num_shards", "1", "--direct_num_workers", "1"])
    wall = time.time() - t0
    kept = read_jsonl_shards(str(out / "clean" / "*" / "part-*.jsonl"))
    kept = [d for d in kept if "step" not in d]
    rejected = read_jsonl_shards(str(out / "clean" / "rejected" / "part-*.jsonl"))
    m = evaluate(recs, kept, rejected)
    table = markdown(m)
    print(f"corpus: {len(recs)} documents ({args.docs_per_lang} clean per language, "
          f"{args.junk_per_kind} per junk kind) + broken lines; pipeline wall {wall:.1f}s")
    print(f"accounting: inputs {report['inputs']} = kept {report['kept']} + rejected "
          f"{report['rejected']} + malformed {report['malformed']}\n")
    print(table)
    ms_id = run_ms_id(out / "ms_id", args.seed)
    print(ms_id)
    table += "\n" + ms_id
    (out / "quality.md").write_text(table)
    (out / "quality.json").write_text(json.dumps(m, indent=1))
    return m


# Malay/Indonesian with trustworthy labels (Leipzig's "ms" file is mostly Indonesian-style text:
# karena 18 vs kerana 9, bisa 25 vs boleh 9, saja 26 vs sahaja 5): professional translations.
MS_ID_SOURCES = {
    "FLORES-200 dev": {"ms": "benchmarks/flores200/dev/zsm_Latn.dev",
                       "id": "benchmarks/flores200/dev/ind_Latn.dev"},
    "NTREX-128": {"ms": "bitext/ntrex128/NTREX-128/newstest2019-ref.msa.txt",
                  "id": "bitext/ntrex128/NTREX-128/newstest2019-ref.ind.txt"},
}


def run_ms_id(out: Path, seed: int = 0) -> str:
    """Keep rates of genuine Malay and Indonesian documents (8 sentences, 1-3 per line) with
    lid.176 alone and with the ms/id second opinion; returns the Markdown table."""
    import random

    from data_pipelines import clean_web
    from data_pipelines.eval_corpus import make_document, write_corpus
    from data_pipelines.runs import read_jsonl_shards

    rng, recs = random.Random(seed), []
    for source, files in MS_ID_SOURCES.items():
        for lang, rel in files.items():
            lines = [x.strip() for x in (SHARED / rel).read_text(encoding="utf-8").splitlines()
                     if x.strip()]
            for i in range(0, len(lines) - 7, 8):
                recs.append({"id": f"{source}-{lang}-{i}", "text": make_document(
                    lines[i:i + 8], lang, rng), "gold_lang": lang, "source": source})
    write_corpus(recs, out / "raw" / "ms_id.jsonl", broken=False)
    rows = ["| ms/id documents | LID | docs | labelled right | kept (right label) | kept (any) |",
            "|---|---|---:|---:|---:|---:|"]
    for name, flags in (("lid.176 alone", ["--no_ms_id_second_opinion"]),
                        ("lid.176 + lingua", [])):
        dst = out / name.replace(" ", "_").replace("+", "p")
        clean_web.main(["--input", str(out / "raw" / "ms_id.jsonl"), "--output", str(dst),
                        "--languages", ",".join(MARCO_LANGUAGES), "--token_counter", "whitespace",
                        "--num_shards", "1", "--direct_num_workers", "1", *flags])
        kept = {d["id"]: d["lang"] for d in read_jsonl_shards(str(dst / "*" / "part-*.jsonl"))
                if "step" not in d}
        rejected = {r["id"]: r.get("lang") for r in
                    read_jsonl_shards(str(dst / "rejected" / "part-*.jsonl"))}
        for source in MS_ID_SOURCES:
            for lang in ("ms", "id"):
                ids = [r["id"] for r in recs if r["source"] == source and r["gold_lang"] == lang]
                label = [kept.get(i, rejected.get(i)) for i in ids]
                n = len(ids)
                rows.append(f"| {source} {lang} | {name} | {n} | "
                            f"{sum(x == lang for x in label) / n:.2f} | "
                            f"{sum(kept.get(i) == lang for i in ids) / n:.2f} | "
                            f"{sum(i in kept for i in ids) / n:.2f} |")
    return "\n".join(rows) + "\n"


def _speed_corpus(n: int, path: Path, seed: int = 0) -> list[dict]:
    from data_pipelines.eval_corpus import build_corpus, write_corpus

    per_lang = max(1, n // (len(EVAL_LANGS) + 6))
    recs = build_corpus(SHARED / "text", EVAL_LANGS, per_lang, max(1, n // 40), WRONG, seed=seed,
                        sentences_per_doc=(8, 12))
    write_corpus(recs, path, broken=False)
    return recs


def run_beam(raw: Path, out: Path) -> float:
    from data_pipelines import clean_web

    t0 = time.time()
    clean_web.main(["--input", str(raw), "--output", str(out), "--languages",
                    ",".join(MARCO_LANGUAGES), "--token_counter", "whitespace", "--no_pii",
                    "--no_exact_dedup", "--num_shards", "1", "--rejected_sample", "0",
                    "--direct_num_workers", str(WORKERS)])
    return time.time() - t0


def run_datatrove(raw: Path, out: Path, quality) -> float:
    """The same steps with datatrove's own pipeline objects and LocalPipelineExecutor; `quality`:
    the filters with datatrove's stock word tokenizers, already warm."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import LambdaFilter, LanguageFilter
    from datatrove.pipeline.formatters.base import BaseFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from data_pipelines.lid import bundled_lid176_path
    from data_pipelines.normalize import normalize_text
    from data_pipelines.words import RuleWordTokenizer

    class Normalize(BaseFormatter):
        def format(self, text: str) -> str:
            return normalize_text(text)


    def passes(doc) -> bool:
        return quality.check(doc.text, doc.metadata["language"]) is None

    import datatrove.pipeline.filters.language_filter as dt_lf
    from datatrove.utils.lid import FT176LID

    class BundledFT176(FT176LID):
        """datatrove's lid.176 wrapper reading the bundled .ftz (offline; the executor deep-copies
        the pipeline, so the model must load lazily, not be attached here)."""

        @property
        def model(self):
            if self._model is None:
                import fasttext

                self._model = fasttext.load_model(str(bundled_lid176_path()))
            return self._model

        def predict(self, doc):  # fasttext-predict returns floats where datatrove expects numpy
            langs, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
            pairs = {label.split("__")[2]: float(score)
                     for label, score in zip(langs, scores, strict=True)}
            best = max(pairs.items(), key=lambda x: x[1])
            return best, {lang: pairs.get(lang, 0.0) for lang in self.languages}

    # datatrove checks for the `fasttext` distribution by name; `fasttext-predict` provides the
    # same module (predict only), which is all LanguageFilter uses.
    dt_lf.LanguageFilter._requires_dependencies = []
    lid = LanguageFilter(languages=list(MARCO_LANGUAGES), language_threshold=0.65)
    lid.model = BundledFT176(list(MARCO_LANGUAGES))
    from datatrove.utils.hashing import HashConfig

    # FineWeb-2's MinHash setting (xxhash, 64 bit, 14 x 8, word 5-grams)
    cfg = MinhashConfig(num_buckets=14, hashes_per_bucket=8, n_grams=5,
                        hash_config=HashConfig(hash_fc="xxhash", precision=64))
    t0 = time.time()
    kw = dict(tasks=1, workers=WORKERS, logging_dir=str(out / "logs"), skip_completed=False)
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(raw.parent), glob_pattern=raw.name), Normalize(), lid,
        LambdaFilter(passes), JsonlWriter(str(out / "filtered")),
        # datatrove shingles with one word tokenizer per step (FineWeb-2 runs one language per
        # job); on this mixed-language input we give it our Unicode-rule tokenizer.
        MinhashDedupSignature(output_folder=str(out / "sig"), config=cfg,
                              language=RuleWordTokenizer("xx"))], **kw).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(
        input_folder=str(out / "sig"), output_folder=str(out / "buckets"), config=cfg)],
        **{**kw, "tasks": cfg.num_buckets, "logging_dir": str(out / "logs2")}).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(
        input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg)],
        **{**kw, "logging_dir": str(out / "logs3")}).run()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(out / "filtered")), MinhashDedupFilter(input_folder=str(out / "remove")),
        JsonlWriter(str(out / "final"))], **{**kw, "logging_dir": str(out / "logs4")}).run()
    return time.time() - t0


def _warm_up(recs: list[dict]):
    """Loads the models and tokenizers of both engines (ours are process-wide caches; datatrove's
    stock tokenizers live in the returned filters), so neither timing includes one-off loading.
    Returns the quality filters for the datatrove run."""
    from data_pipelines.lid import LanguageIdentifier
    from data_pipelines.ms_id import MsIdDetector
    from data_pipelines.quality import QualityFilters
    from data_pipelines.words import stock_word_tokenizer

    LanguageIdentifier().predict("warm up")
    MsIdDetector().decide(["warm up"])
    ours, stock = QualityFilters(), QualityFilters(tokenizer_for=stock_word_tokenizer)
    for lang in MARCO_LANGUAGES:
        text = next((r["text"] for r in recs if r["gold_lang"] == lang), "warm up " * 60)
        ours.check(text, lang)
        stock.check(text, lang)
    return stock


def run_speed(args) -> None:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    raw = out / "raw" / "speed.jsonl"
    recs = _speed_corpus(args.docs, raw)
    n = len(recs)
    print(f"input: {n} documents, {raw.stat().st_size / 1e6:.1f} MB; each engine runs with "
          f"{WORKERS} worker (Beam DirectRunner direct_num_workers={WORKERS}, in-process; "
          f"datatrove LocalPipelineExecutor workers={WORKERS}), so documents/s per core = "
          f"documents / wall seconds / {WORKERS} (this machine: {os.cpu_count()} cores, shared)")
    t0 = time.time()
    stock_quality = _warm_up(recs)
    print(f"warm-up (LID models, 2 x 29 word tokenizers, filters; excluded from both timings): "
          f"{time.time() - t0:.1f}s")
    results = {"beam_direct": run_beam(raw, out / "beam")}
    try:
        import datatrove  # noqa: F401
    except ImportError:
        print("datatrove not installed: skipping the side-by-side run")
    else:
        results["datatrove_local"] = run_datatrove(raw, out / "dt", stock_quality)
    print("| engine | wall s | documents/s per core |\n|---|---:|---:|")
    for name, wall in results.items():
        print(f"| {name} | {wall:.1f} | {n / wall / WORKERS:.1f} |")
    print(SAME_AND_DIFFERENT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("quality", "speed"))
    ap.add_argument("--docs_per_lang", type=int, default=20)
    ap.add_argument("--junk_per_kind", type=int, default=28)
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/marco_clean_bench")
    args = ap.parse_args()
    run_quality(args) if args.mode == "quality" else run_speed(args)


if __name__ == "__main__":
    main()
