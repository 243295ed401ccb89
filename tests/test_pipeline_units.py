"""Unit tests of the cleaning pipeline's building blocks (no Beam job)."""

import json
import random

import pytest

from data_pipelines import accounting
from data_pipelines.eval_corpus import load_sentences, make_document
from data_pipelines.languages import (
    GLOT_CODES,
    MARCO_LANGUAGES,
    normalize_lid_label,
    parse_languages,
)
from data_pipelines.lid import LanguageIdentifier
from data_pipelines.minhash import (
    MinHashConfig,
    UnionFind,
    band_keys,
    bucket_edges,
    jaccard,
    shingles,
    signature,
)
from data_pipelines.normalize import normalize_text
from data_pipelines.pii import PIIScrubber
from data_pipelines.quality import QualityFilters
from data_pipelines.records import RawLine, parse_web_document
from data_pipelines.sinks import tf_example
from data_pipelines.thresholds import (
    load_thresholds_file,
    merge_overrides,
    parse_threshold_flags,
    thresholds_for,
)
from data_pipelines.words import SUBSTITUTED, RuleWordTokenizer, word_tokenizer


def test_normalize_repairs_mojibake_and_whitespace():
    # UTF-8 read as cp1252: the classic "â€™" for a right quote; NBSP/tabs; CRLF; 3 blank lines.
    raw = "It\u00e2\u20ac\u2122s fine.\r\n\r\n\r\n\r\n\u00a0 a\t\tb \u200b "
    assert normalize_text(raw) == "It's fine.\n\na b"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC


def test_pii_scrubs_emails_public_ips_phones_but_not_dates_or_numbers():
    out = PIIScrubber()("Write to jane.doe@mail.com, call +44 20 7946 0958 or (030) 1234 5678; "
                        "server 8.8.8.8, lan 192.168.0.1, on 2023-01-15, 1,000,000 people.")
    assert "jane.doe" not in out and "@example." in out
    assert "7946" not in out and "1234 5678" not in out and out.count("<PHONE>") == 2
    assert "8.8.8.8" not in out and "192.168.0.1" in out  # only public IPs are PII
    assert "2023-01-15" in out and "1,000,000" in out


def test_languages_and_lid_labels():
    assert len(MARCO_LANGUAGES) == 29 and parse_languages("all") == MARCO_LANGUAGES
    assert parse_languages("en, zh") == ("en", "zh")
    with pytest.raises(ValueError, match="xx"):
        parse_languages("en,xx")
    assert normalize_lid_label("__label__cmn_Hani") == "zh"
    assert normalize_lid_label("__label__en") == "en"
    assert normalize_lid_label("__label__swe_Latn") == "swe_Latn"


def test_bundled_lid176_identifies_offline():
    lid = LanguageIdentifier()
    assert lid.predict("Der schnelle braune Fuchs springt über den faulen Hund.")[0] == "de"
    assert lid.predict("这是一个用于检测语言的测试句子。")[0] == "zh"
    assert lid.backend == "lid176"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        LanguageIdentifier("/nope.bin").predict("x")


@pytest.mark.parametrize("lang", MARCO_LANGUAGES)
def test_every_language_has_thresholds_and_filters(lang):
    t = thresholds_for(lang)
    assert 0 < t.lid176 <= 1 and 0 < t.glotlid <= 1
    filters = QualityFilters().filters_for(lang)
    assert [s for s, _ in filters] == ["gopher_repetition", "fineweb_quality", "gopher_quality"]


def test_fineweb2_values_reach_datatrove_filters():
    (_, rep), (_, fw), (_, gq) = QualityFilters().filters_for("de")
    # configs/deu_Latn.yml: dup_line_frac 0.263, line_punct_thr 0.0, max_avg_word_length 15
    assert rep.dup_line_frac == 0.263 and rep.dup_para_frac == 0
    assert rep.top_n_grams == ((2, 0.169), (3, 0.153), (4, 0.137))
    assert fw.line_punct_thr == 0.0 and fw.char_duplicates_ratio == 0.1
    assert gq.max_avg_word_length == 15 and "wurde" in gq.stop_words


def test_word_segmentation_for_unspaced_scripts():
    zh = word_tokenizer("zh").word_tokenize("我们今天去北京。")
    assert zh == ["我们", "今天", "去", "北京", "。"]
    ja = word_tokenizer("ja").word_tokenize("日本の首都は東京です。")
    assert ja[:3] == ["日本", "の", "首都"]
    assert len(word_tokenizer("th").word_tokenize("ประเทศไทยมีประชากรมาก")) >= 3
    assert word_tokenizer("fr").word_tokenize("L'homme d'affaires.") == ["L'", "homme", "d'",
                                                                        "affaires", "."]


def test_filters_use_fineweb2_word_tokenizer_assignment():
    """FineWeb-2 passes language="fra_Latn" etc.; datatrove then picks the tokenizer from its
    assignment table. Ours must be that tokenizer except for the named substitutes."""
    from datatrove.utils.word_tokenizers import SpaCyTokenizer, ThaiTokenizer, load_word_tokenizer

    text = "L'été 2016/17, à 12:30... (n° 5) « super » !"
    for lang in ("fr", "pt", "nl", "he", "en"):
        ours = word_tokenizer(lang)
        assert isinstance(ours, SpaCyTokenizer) and ours.language == lang
        assert ours.word_tokenize(text) == load_word_tokenizer(GLOT_CODES[lang]).word_tokenize(
            text)
    assert isinstance(word_tokenizer("th"), ThaiTokenizer)
    assert isinstance(word_tokenizer("kk"), RuleWordTokenizer) and "kk" in SUBSTITUTED


def test_rule_tokenizer_matches_spacy_statistics(shared_data):
    """The substitute for kk/bn/ur/ne/vi, checked against spaCy's tokenizer on real sentences:
    the alphabetic-word ratio (a Gopher threshold input) and the word count agree closely."""
    assert RuleWordTokenizer().word_tokenize("Um 12:30 Uhr... kostet's 1.000,50 € (ca.)!!") == [
        "Um", "12:30", "Uhr", "...", "kostet's", "1.000,50", "€", "(", "ca", ".", ")", "!!"]
    for lang in ("ru", "de", "el"):
        sents = load_sentences(shared_data / "text", lang)[:200]
        ref = [w for s in sents for w in word_tokenizer(lang).word_tokenize(s)]
        ours = [w for s in sents for w in RuleWordTokenizer(lang).word_tokenize(s)]

        def alpha(ws):
            return sum(any(c.isalpha() for c in w) for w in ws) / len(ws)

        assert abs(alpha(ours) - alpha(ref)) < 0.015, lang
        assert abs(len(ours) / len(ref) - 1) < 0.03, lang


def test_threshold_overrides_reach_the_filters(tmp_path):
    flags = parse_threshold_flags(["th.gopher_quality.max_non_alpha_words_ratio=0.6",
                                   "*.gopher_quality.min_stop_words=1",
                                   "de.fineweb_quality.line_punct_thr=null"])
    assert flags["th"]["gopher_quality"] == {"max_non_alpha_words_ratio": 0.6}
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"de": {"gopher_quality": {"min_stop_words": 3}},
                                "th": {"gopher_quality": {"max_non_alpha_words_ratio": 0.5}}}))
    merged = merge_overrides(load_thresholds_file(str(path)), flags)  # flags win
    (_, rep), (_, fw), (_, gq) = QualityFilters(overrides=merged).filters_for("de")
    assert gq.min_stop_words == 3 and fw.line_punct_thr is None
    assert gq.max_avg_word_length == 15 and rep.dup_line_frac == 0.263  # the rest as published
    assert QualityFilters(overrides=merged).filters_for("th")[2][1].max_non_alpha_words_ratio == 0.6
    assert QualityFilters(overrides=merged).filters_for("ru")[2][1].min_stop_words == 1
    # shipped default for Thai, and the published value without it
    assert thresholds_for("th").gopher_quality["max_non_alpha_words_ratio"] == 0.75
    assert thresholds_for("th", defaults=False).gopher_quality["max_non_alpha_words_ratio"] == 0.9
    for bad, match in (("th.gopher_quality.max_alpha=1", "unknown key.*max_alpha"),
                       ("th.gopher.min_stop_words=1", "unknown filter 'gopher'"),
                       ("xx.gopher_quality.min_stop_words=1", "unknown language 'xx'"),
                       ("th.gopher_quality=1", "LANG.FILTER.KEY=VALUE")):
        with pytest.raises(ValueError, match=match):
            parse_threshold_flags([bad])
    path.write_text("{not json")
    with pytest.raises(ValueError, match="o.json: not valid JSON"):
        load_thresholds_file(str(path))


def test_thai_default_override_keeps_genuine_thai(shared_data):
    """Real Thai web text fails FineWeb-2's published 0.9 alphabetic-word ratio with FineWeb-2's
    own Thai tokenizer (pythainlp); the shipped 0.75 keeps it."""
    rng = random.Random(0)
    sents = load_sentences(shared_data / "text", "th")
    docs = [normalize_text(make_document(sents[i:i + 10], "th", rng)) for i in range(0, 100, 10)]
    published = {"th": {"gopher_quality": {"max_non_alpha_words_ratio": 0.9}}}
    alpha_fail = ("gopher_quality", "gopher_below_alpha_threshold")
    assert sum(QualityFilters(overrides=published).check(d, "th") == alpha_fail
               for d in docs) >= 4
    assert all(QualityFilters().check(d, "th") is None for d in docs)


def test_quality_filters_reject_repetition_and_accept_prose():
    q = QualityFilters()
    prose = ("The committee met on Tuesday to review the budget for the coming year. " * 1
             + "Members discussed the new library, the roads and the school buildings that need "
             "repairs before winter. After a long debate, they agreed to fund the most urgent "
             "projects first and to hold a public hearing next month. Residents will be able to "
             "comment on the plan online or in person at the town hall, and the final vote is "
             "expected in early spring.")
    assert q.check(prose, "en") is None
    assert q.check("\n".join(["Buy cheap watches now"] * 30), "en")[0] == "gopher_repetition"


def test_parse_counts_every_bad_line_as_malformed():
    cases = {b'{"text": "unterminated': "bad_json", b'{"text": "caf\xe9"}': "bad_encoding",
             b'{"body": "x"}': "missing_text", b"[1]": "not_an_object",
             b'{"text": 5}': "bad_text_type", b"  ": "empty_line"}
    for i, (data, reason) in enumerate(cases.items()):
        doc, bad = parse_web_document(RawLine("f.jsonl", i + 1, data))
        assert doc is None and bad["reason"] == reason and bad["uid"] == f"f.jsonl:{i + 1}"
    doc, bad = parse_web_document(RawLine("f.jsonl", 9, b'{"text": "hi", "url": "u"}'))
    assert bad is None and doc == {"uid": "f.jsonl:9", "id": "f.jsonl:9", "text": "hi", "url": "u"}


def test_tf_example_encoding_parses_with_tensorflow():
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example.FromString(
        tf_example({"text": "héllo 世界", "lang": "zh", "id": "a" * 300, "score": 1.25}))
    f = ex.features.feature
    assert f["text"].bytes_list.value == ["héllo 世界".encode()]
    assert f["id"].bytes_list.value == [b"a" * 300] and f["lang"].bytes_list.value == [b"zh"]
    assert f["score"].float_list.value == [1.25]


def test_minhash_lsh_catches_high_jaccard_pairs():
    rng = random.Random(0)
    cfg = MinHashConfig()
    vocab = [f"w{i}" for i in range(3000)]
    caught = total = 0
    for _ in range(60):
        words = [rng.choice(vocab) for _ in range(300)]
        edited = list(words)
        for _ in range(4):  # 4 substitutions -> Jaccard of 5-grams ~0.88
            edited[rng.randrange(len(edited))] = rng.choice(vocab)
        a, b = " ".join(words), " ".join(edited)
        if jaccard(shingles(a, "en", 5), shingles(b, "en", 5)) < 0.8:
            continue
        total += 1
        ka = set(band_keys(signature(a, "en", cfg), "en", cfg))
        caught += bool(ka & set(band_keys(signature(b, "en", cfg), "en", cfg)))
    assert total >= 40 and caught / total >= 0.9
    # unrelated documents never collide
    x = " ".join(rng.choice(vocab) for _ in range(300))
    y = " ".join(rng.choice(vocab) for _ in range(300))
    assert not set(band_keys(signature(x, "en", cfg), "en", cfg)) & set(
        band_keys(signature(y, "en", cfg), "en", cfg))
    # band keys are language-scoped
    assert not set(band_keys(signature(x, "en", cfg), "en", cfg)) & set(
        band_keys(signature(x, "de", cfg), "de", cfg))


def test_union_find_merge_equals_single_pass():
    rng = random.Random(1)
    edges = [(f"d{rng.randrange(50):02d}", f"d{rng.randrange(50):02d}") for _ in range(60)]
    whole = UnionFind()
    for e in edges:
        whole.union(*e)
    parts = [UnionFind() for _ in range(4)]  # as if 4 workers saw a quarter each
    for i, e in enumerate(edges):
        parts[i % 4].union(*e)
    parts[2].merge(parts[3])
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert parts[0].roots() == whole.roots()
    roots = whole.roots()
    for node, root in roots.items():  # root is the smallest member of its component
        assert root == min(n for n, r in roots.items() if r == root) and root <= node
    assert bucket_edges(["c", "a", "b", "a"]) == [("a", "b"), ("a", "c")]


def test_accounting_report_and_identity():
    tally = {("en", "kept", ""): [3, 30], ("en", "gopher_quality", "short"): [2, 5],
             ("und", "parse", "bad_json"): [1, 0], ("sv", "lid", "other_language"): [1, 7]}
    rep = accounting.build_report(tally, 7, ("parse", "lid", "gopher_quality"))
    assert (rep["kept"], rep["rejected"], rep["malformed"]) == (3, 3, 1)
    en = {r["step"]: r for r in rep["steps"] if r["lang"] == "en"}
    assert en["lid"]["records_in"] == 5 and en["gopher_quality"]["records_out"] == 3
    assert en["gopher_quality"]["tokens_in"] == 35 and en["gopher_quality"]["tokens_out"] == 30
    assert "| gopher_quality | en | 5 | 3 | 35 | 30 |" in accounting.report_markdown(rep)
    with pytest.raises(accounting.AccountingError, match="8 input records"):
        accounting.build_report(tally, 8, ("parse", "lid", "gopher_quality"))
