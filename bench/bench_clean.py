"""Cleaning-pipeline benchmark and quality measurement.

  python bench/bench_clean.py quality [--docs_per_lang 20] [--out /tmp/clean_quality]
      builds a labelled corpus from ../shared/data/text (real sentences in 28 Marco languages,
      Nepali is absent there) mixed with generated junk, runs the Beam pipeline, prints LID
      accuracy per language and junk precision/recall per filter as Markdown.
  python bench/bench_clean.py speed [--docs 2000]
      documents/s per core on the same input and the same filter set (normalise -> LID -> Gopher
      repetition -> FineWeb quality -> Gopher quality -> MinHash dedup): our Beam pipeline on the
      DirectRunner vs datatrove's LocalPipelineExecutor, each with 1 worker (per core = documents
      / wall s / workers), after one shared warm-up that loads the LID model and tokenizers.
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
three datatrove filters with the same per-language kwargs and word tokenizers
(data_pipelines.quality.QualityFilters), MinHash 14 bands x 8 rows over word 5-grams.
Different: datatrove hashes shingles with xxhash-64 and shingles every document with one
Unicode-rule tokenizer (its signature step takes one language per job), our Beam job uses
datasketch (sha1) and each document's own language tokenizer; Beam also counts whitespace tokens,
writes TFRecord + JSONL shards and report.json; datatrove runs its 4 MinHash stages as separate
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
    (out / "quality.md").write_text(table)
    (out / "quality.json").write_text(json.dumps(m, indent=1))
    return m


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
