"""Clean parallel text with Apache Beam.

  python -m data_pipelines.clean_bitext --input 'bitext/*.jsonl' --output out/ --pairs en-zh,en-de \
      [--encoder marco_jax:/ckpt --min_margin 1.04 --margin_k 4] [Beam pipeline options]

Input lines: {"src", "tgt", "src_lang", "tgt_lang", "id"?}. Writes out/{src}-{tgt}/part-* with
{"src", "tgt", "src_lang", "tgt_lang", "score"}, stats.json, report.{json,md}, rejected/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from data_pipelines.bitext import BitextConfig
from data_pipelines.errors import BadInput, fail
from data_pipelines.languages import GLOT_CODES
from data_pipelines.options import (
    OneLineArgumentParser,
    add_common_args,
    common_config,
    run_pipeline,
)


def parse_args(argv: list[str]) -> tuple[BitextConfig, tuple[str, ...], list[str]]:
    ap = OneLineArgumentParser(prog="python -m data_pipelines.clean_bitext", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--pairs", required=True, help="comma list of src-tgt ISO 639-1 pairs")
    ap.add_argument("--lid_threshold", type=float, default=0.0)
    ap.add_argument("--max_words", type=int, default=200)
    ap.add_argument("--max_length_ratio", type=float, default=3.0)
    ap.add_argument("--max_copy_overlap", type=float, default=0.8)
    ap.add_argument("--encoder", default=None, help="marco_jax:/ckpt | ngram | py:module:attr")
    ap.add_argument("--margin_k", type=int, default=4)
    ap.add_argument("--min_margin", type=float, default=1.04)
    ap.add_argument("--margin_shards", type=int, default=1)
    args, beam_args = ap.parse_known_args(argv)
    pairs = tuple(s.strip() for s in args.pairs.split(",") if s.strip())
    bad = [s for s in pairs if s.count("-") != 1 or "" in s.split("-")]
    if bad or not pairs:
        ap.error(f"--pairs={args.pairs!r}: expected 'src-tgt' items such as en-zh,en-de")
    unknown = sorted({code for pair in pairs for code in pair.split("-")} - set(GLOT_CODES))
    if unknown:
        ap.error(f"--pairs={args.pairs!r}: unknown language code(s) {unknown}; expected ISO "
                 f"639-1 codes from {', '.join(GLOT_CODES)}")
    cfg = BitextConfig(
        **common_config(args), lid_threshold=args.lid_threshold, max_words=args.max_words,
        max_length_ratio=args.max_length_ratio, max_copy_overlap=args.max_copy_overlap,
        encoder=args.encoder, margin_k=args.margin_k, min_margin=args.min_margin,
        margin_shards=args.margin_shards)
    return cfg, pairs, beam_args


def main(argv: list[str] | None = None) -> dict:
    from data_pipelines.bitext import build_bitext_pipeline

    cfg, pairs, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = run_pipeline(
            lambda p, out: build_bitext_pipeline(p, dataclasses.replace(cfg, output=out), pairs),
            beam_args, cfg.input, cfg.output, cfg.overwrite)
    except BadInput as e:
        fail(str(e))
    print(f"inputs {report['inputs']}: kept {report['kept']} pairs, rejected {report['rejected']},"
          f" malformed {report['malformed']} -> {cfg.output}")
    return report


if __name__ == "__main__":
    main()
