"""The bitext cleaning pipeline as Beam transforms.

read JSONL {"src", "tgt", "src_lang", "tgt_lang"} -> parse -> normalise both sides -> per-side
language ID -> length (1..max words per side) and length ratio (<= 3, in words from each
language's segmenter) -> copy / untranslated detection -> duplicate pairs -> margin score with a
pluggable sentence encoder (k nearest neighbours per language-pair block, ratio margin) ->
`out/{src}-{tgt}/` shards + stats.json + report.{json,md} + rejected sink.
"""

from __future__ import annotations

import dataclasses
import hashlib

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from data_pipelines import sinks
from data_pipelines.accounting import REJECTED, account_and_report, reject
from data_pipelines.dedup import ExactDedup
from data_pipelines.records import parse_json_object, read_raw

STEPS = ("parse", "normalize", "lid", "length", "copy", "dedup", "margin")


@dataclasses.dataclass(frozen=True)
class BitextConfig:
    input: str
    output: str
    lid_model: str | None = None
    lid_threshold: float = 0.0  # besides the top label matching the declared language
    min_words: int = 1
    max_words: int = 200
    max_length_ratio: float = 3.0
    max_copy_overlap: float = 0.8  # word-set Jaccard above which tgt counts as untranslated
    encoder: str | None = None  # None: no margin step
    margin_k: int = 4
    min_margin: float = 1.04
    margin_shards: int = 1  # blocks per language pair for the kNN search
    token_counter: str = "qwen2"
    format: str = "tfrecord"
    num_shards: int = 0
    rejected_sample: float = 1.0
    overwrite: bool = False  # replace a non-empty output (see output_dir.py)

    steps = STEPS


def _words(text: str, lang: str) -> list[str]:
    from data_pipelines.words import word_tokenizer

    try:
        tok = word_tokenizer(lang)
    except Exception:  # a language outside our table: Unicode rules
        tok = word_tokenizer("xx")
    return [w for w in tok.word_tokenize(text) if any(c.isalnum() for c in w)]


def _canon(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


class CleanPairFn(beam.DoFn):
    def __init__(self, cfg: BitextConfig):
        self.cfg = cfg

    def setup(self):
        from data_pipelines.lid import LanguageIdentifier
        from data_pipelines.normalize import normalize_text
        from data_pipelines.tokens import make_token_counter

        self.normalize, self.lid = normalize_text, LanguageIdentifier(self.cfg.lid_model)
        self.count = make_token_counter(self.cfg.token_counter)

    def process(self, raw):
        cfg = self.cfg
        obj, bad = parse_json_object(raw, ("src", "tgt", "src_lang", "tgt_lang"))
        if bad:
            yield TaggedOutput(REJECTED, bad)
            return
        pair = {"uid": raw.uid, "id": str(obj.get("id") or raw.uid),
                "src_lang": obj["src_lang"], "tgt_lang": obj["tgt_lang"],
                "lang": f"{obj['src_lang']}-{obj['tgt_lang']}",
                "src": self.normalize(obj["src"]), "tgt": self.normalize(obj["tgt"])}
        pair["tokens"] = self.count(pair["src"]) + self.count(pair["tgt"])
        if not pair["src"] or not pair["tgt"]:
            yield reject(pair, "normalize", "empty_side")
            return
        for side in ("src", "tgt"):
            lang, score = self.lid.predict(pair[side])
            if lang != pair[f"{side}_lang"] or score < cfg.lid_threshold:
                yield reject(pair, "lid", f"{side}_wrong_language", f"{lang}:{score:.2f}")
                return
        ns, nt = len(_words(pair["src"], pair["src_lang"])), len(_words(pair["tgt"],
                                                                         pair["tgt_lang"]))
        if min(ns, nt) < cfg.min_words or max(ns, nt) > cfg.max_words:
            yield reject(pair, "length", "length_out_of_range", f"{ns}/{nt}")
            return
        if max(ns, nt) / max(min(ns, nt), 1) > cfg.max_length_ratio:
            yield reject(pair, "length", "length_ratio", f"{ns}/{nt}")
            return
        cs, ct = _canon(pair["src"]), _canon(pair["tgt"])
        if cs == ct:
            yield reject(pair, "copy", "copy")
            return
        ws, wt = set(cs.split()), set(ct.split())
        overlap = len(ws & wt) / max(len(ws | wt), 1)
        if overlap > cfg.max_copy_overlap:
            yield reject(pair, "copy", "untranslated", f"{overlap:.2f}")
            return
        yield pair


def _pair_key(p: dict) -> str:
    return hashlib.sha1(f"{p['lang']}\x00{_canon(p['src'])}\x00{_canon(p['tgt'])}".encode()
                        ).hexdigest()


class MarginScoreFn(beam.DoFn):
    """One block of pairs of one language pair -> margin scores -> keep / reject."""

    def __init__(self, cfg: BitextConfig):
        self.cfg = cfg

    def setup(self):
        from data_pipelines.encoders import make_encoder

        self.encoder = make_encoder(self.cfg.encoder)

    def process(self, kv):
        from data_pipelines.encoders import margin_scores

        pairs = sorted(kv[1], key=lambda p: p["uid"])
        scores = margin_scores(self.encoder.encode([p["src"] for p in pairs]),
                               self.encoder.encode([p["tgt"] for p in pairs]), self.cfg.margin_k)
        for p, s in zip(pairs, scores, strict=True):
            p = {**p, "score": round(float(s), 4)}
            if s < self.cfg.min_margin:
                yield reject(p, "margin", "low_margin", f"{s:.3f}")
            else:
                yield p


def output_pair(p: dict) -> dict:
    return {"src": p["src"], "tgt": p["tgt"], "src_lang": p["src_lang"],
            "tgt_lang": p["tgt_lang"], "score": p.get("score", 0.0), "id": p["id"]}


def build_bitext_pipeline(p: beam.Pipeline, cfg: BitextConfig, pairs: tuple[str, ...]):
    """`pairs`: the "src-tgt" language pairs to write (others are rejected at lid: declared
    languages outside the run's list)."""
    raw, n_input = read_raw(p, cfg.input)
    cleaned = raw | "Clean" >> beam.ParDo(CleanPairFn(cfg)).with_outputs(REJECTED, main="kept")
    wanted = set(pairs)
    routed = cleaned.kept | "PairWanted" >> beam.FlatMap(
        lambda q: [q] if q["lang"] in wanted else [reject(q, "lid", "pair_not_requested")]
    ).with_outputs(REJECTED, main="kept")
    dd = routed.kept | "PairDedup" >> ExactDedup(_pair_key, "dedup", "duplicate_pair")
    kept, rejected = dd.kept, [cleaned[REJECTED], routed[REJECTED], dd[REJECTED]]
    if cfg.encoder:
        shards = cfg.margin_shards
        ms = (kept | "Block" >> beam.Map(lambda q: (
                  (q["lang"], int(hashlib.sha1(q["uid"].encode()).hexdigest(), 16) % shards), q))
              | "BlockGroup" >> beam.GroupByKey()
              | "Margin" >> beam.ParDo(MarginScoreFn(cfg)).with_outputs(REJECTED, main="kept"))
        kept = ms.kept
        rejected.append(ms[REJECTED])

    sinks.write_partitioned(
        kept, cfg.output, tuple(pairs), lambda q: q["lang"], cfg.format, cfg.num_shards,
        to_example=lambda q: sinks.tf_example(
            {k: v for k, v in output_pair(q).items() if k != "id"}),
        to_json=output_pair)
    return account_and_report(kept, rejected, n_input, STEPS, cfg.output, cfg.rejected_sample,
                              partitions=pairs)


__all__ = ["BitextConfig", "build_bitext_pipeline"]
