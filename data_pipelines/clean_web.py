"""Clean multilingual web text with Apache Beam.

  python -m data_pipelines.clean_web --input 'raw/*.jsonl.gz' --output out/ --languages en,zh \
      [--runner DirectRunner|DataflowRunner|FlinkRunner|SparkRunner ...Beam options]

Writes out/{lang}/part-*.{tfrecord|array_record} + .jsonl, out/stats.json, out/report.{json,md}
and out/rejected/part-*.jsonl. See data_pipelines/README.md. A non-empty out/ is refused unless
--overwrite; the run is written beside it and replaces it only when it has succeeded.
Exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from data_pipelines.errors import BadInput, fail
from data_pipelines.languages import parse_languages
from data_pipelines.minhash import MinHashConfig
from data_pipelines.options import (
    OneLineArgumentParser,
    add_common_args,
    common_config,
    expand_star,
    parse_lang_floats,
    parse_lid_accept,
    run_pipeline,
)
from data_pipelines.quality import QUALITY_STEPS
from data_pipelines.thresholds import load_thresholds_file, merge_overrides, parse_threshold_flags
from data_pipelines.web import WebConfig


def parse_args(argv: list[str]) -> tuple[WebConfig, list[str]]:
    ap = OneLineArgumentParser(prog="python -m data_pipelines.clean_web", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--languages", default="all", help="ISO 639-1 codes to keep, or 'all' (29)")
    ap.add_argument("--text_field", default="text")
    ap.add_argument("--lid_threshold", default="",
                    help="min LID score: X for all or 'en=0.7,zh=0.5' (default per language)")
    ap.add_argument("--declared_lang_field", default=None,
                    help="input field holding a declared ISO 639-1 language (crawl seed, TLD); "
                         "only used by --lid_accept")
    ap.add_argument("--lid_accept", default="",
                    help="'ms=id': keep a document declared 'ms' that LID labels 'id' as 'ms' "
                         "(comma list, repeat a language for several labels)")
    ap.add_argument("--no_ms_id_second_opinion", action="store_true",
                    help="trust lid.176 on Malay vs Indonesian (by default lingua decides the "
                         "documents lid.176 labels ms or id; README 'Malay')")
    ap.add_argument("--threshold", action="append", default=[], metavar="LANG.FILTER.KEY=VALUE",
                    help="override one heuristic threshold, e.g. "
                         "th.gopher_quality.max_non_alpha_words_ratio=0.8 ('*' = every "
                         "language; repeatable; wins over --thresholds_file)")
    ap.add_argument("--thresholds_file", default=None,
                    help='JSON {"lang" or "*": {"filter": {"key": value}}} of overrides')
    ap.add_argument("--quality_filters", default=",".join(QUALITY_STEPS),
                    help=f"comma list from {QUALITY_STEPS}, '' for none")
    ap.add_argument("--perplexity_model", default=None, help="kenlm:/dir or marco_jax:/checkpoint")
    ap.add_argument("--max_perplexity", default="", help="X or 'en=300,zh=500'")
    ap.add_argument("--no_pii", action="store_true", help="keep e-mails, IPs and phone numbers")
    ap.add_argument("--no_exact_dedup", action="store_true")
    ap.add_argument("--no_near_dedup", action="store_true")
    ap.add_argument("--minhash_bands", type=int, default=14)
    ap.add_argument("--minhash_rows", type=int, default=8)
    ap.add_argument("--minhash_ngram", type=int, default=5)
    args, beam_args = ap.parse_known_args(argv)
    try:
        return _config(args, ap), beam_args
    except (ValueError, OSError, ImportError) as e:  # a bad value or file named by its flag
        ap.error(str(e))


def _config(args: argparse.Namespace, ap: argparse.ArgumentParser) -> WebConfig:
    languages = parse_languages(args.languages)
    if args.max_perplexity and not args.perplexity_model:
        ap.error("--max_perplexity needs --perplexity_model")
    lid_accept = parse_lid_accept(args.lid_accept)
    second_opinion = not args.no_ms_id_second_opinion and bool({"ms", "id"} & set(languages))
    if second_opinion:
        from data_pipelines.ms_id import check_available

        check_available()  # ImportError: one line naming the package and the flag
    if lid_accept and not args.declared_lang_field:
        ap.error("--lid_accept needs --declared_lang_field (which field declares the language)")
    overrides = merge_overrides(
        load_thresholds_file(args.thresholds_file) if args.thresholds_file else {},
        parse_threshold_flags(args.threshold))
    return WebConfig(
        **common_config(args), languages=languages, text_field=args.text_field,
        lid_thresholds=expand_star(parse_lang_floats(args.lid_threshold, "--lid_threshold"),
                                   languages),
        quality_steps=tuple(s for s in args.quality_filters.split(",") if s),
        threshold_overrides=overrides, declared_lang_field=args.declared_lang_field,
        lid_accept=lid_accept, perplexity_model=args.perplexity_model,
        max_perplexity=parse_lang_floats(args.max_perplexity, "--max_perplexity"),
        pii=not args.no_pii, exact_dedup=not args.no_exact_dedup,
        near_dedup=not args.no_near_dedup, ms_id_second_opinion=second_opinion,
        minhash=MinHashConfig(ngram=args.minhash_ngram, bands=args.minhash_bands,
                              rows=args.minhash_rows))


def main(argv: list[str] | None = None) -> dict:
    from data_pipelines.web import build_web_pipeline

    cfg, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = run_pipeline(
            lambda p, out: build_web_pipeline(p, dataclasses.replace(cfg, output=out)),
            beam_args, cfg.input, cfg.output, cfg.overwrite)
    except BadInput as e:
        fail(str(e))
    print(f"inputs {report['inputs']}: kept {report['kept']} ({report['kept_tokens']} tokens), "
          f"rejected {report['rejected']}, malformed {report['malformed']} -> {cfg.output}")
    return report


if __name__ == "__main__":
    main()
