"""Benchmark loaders on the real slices in ../shared/data and on our own fixtures in the published
formats of the others; XCOPA and Belebele accuracies through our suite == transformers'."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from marco_jax.evals.tasks import (
    TASKS,
    ChoiceItem,
    EvalDataError,
    GenerationItem,
    load_task,
)
from marco_jax.evals.tasks.base import pick_shots

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
BENCH = "benchmarks"


def _items(task, key):
    return next(s for s in task.subsets if s.key == key).items


def _prompt(item) -> str:
    return item.context if isinstance(item, ChoiceItem) else item.prompt


def test_pick_shots_is_deterministic_and_excludes():
    a = pick_shots(10, 5, exclude=[3], seed=0, salt="x/1")
    assert a == pick_shots(10, 5, exclude=[3], seed=0, salt="x/1")
    assert len(set(a)) == 5 and 3 not in a
    assert a != pick_shots(10, 5, exclude=[3], seed=0, salt="x/2")  # varies across items
    assert sorted(pick_shots(3, 5, exclude=[0])) == [1, 2]  # capped at what is left
    assert pick_shots(5, 0) == []


# --- real slices in ../shared/data -----------------------------------------------------------


def test_xcopa_real(shared_data):
    task = load_task("xcopa", shared_data, {"languages": ["zh", "tr"]})
    raw = [json.loads(x) for x in (shared_data / BENCH / "xcopa/tr/val.tr.jsonl").open()]
    items = _items(task, "tr")
    assert len(items) == len(raw) == 100
    assert [i.gold for i in items] == [r["label"] for r in raw]
    first = items[0]
    assert first.context.startswith("Choose the more plausible continuation of each Turkish")
    # lm-eval's rendering: premise without its period + connector; choices lower-cased first
    assert first.context.endswith(raw[0]["premise"][:-1] + (" bu yüzden" if raw[0]["question"]
                                                            == "effect" else " çünkü"))
    assert first.choices[1] == " " + raw[0]["choice2"][0].lower() + raw[0]["choice2"][1:]
    # 5 demonstrations, never the evaluated item itself
    assert first.context.count("\n\n") == 1 + 5
    for i, item in enumerate(items[:20]):
        assert item.context.count(raw[i]["premise"][:-1]) == 1
    assert load_task("xcopa", shared_data, {"languages": ["zh", "tr"]}) == task  # deterministic


def test_belebele_real(shared_data):
    task = load_task("belebele", shared_data, {"languages": ["en", "de"]})
    for lang, code in (("en", "eng_Latn"), ("de", "deu_Latn")):
        golds = [[a["correct"] for a in q["answers"]].index(True)
                 for line in (shared_data / BENCH / "belebele" / f"{code}.jsonl").open()
                 for q in json.loads(line)["items"]]
        items = _items(task, lang)
        assert [i.gold for i in items] == golds
        assert items[0].choices == (" A", " B", " C", " D")
    item = _items(task, "de")[0]
    assert "passage in German" in item.context and item.context.endswith("\nAnswer:")
    assert item.context.count("P: ") == 2  # one demonstration + the item
    # the demonstration is about another passage
    demo_passage, own_passage = (p.split("\n")[0] for p in item.context.split("P: ")[1:])
    assert demo_passage != own_passage


def test_xnli_real(shared_data):
    task = load_task("xnli", shared_data, {"languages": ["de", "zh"], "shots": 2})
    rows = list(csv.reader((shared_data / BENCH / "xnli/dev-de.tsv").open(encoding="utf-8"),
                           delimiter="\t", quoting=csv.QUOTE_NONE))
    items = _items(task, "de")
    labels = ("entailment", "neutral", "contradiction")
    assert [labels[i.gold] for i in items] == [r[2] for r in rows]
    assert items[0].choices == (" True", " Neither", " False")
    assert "in German" in items[0].context
    assert items[0].context.endswith(f"{rows[0][0]}\nQuestion: {rows[0][1]} True, False or "
                                     "Neither?\nAnswer:")


def test_cmmlu_real(shared_data):
    task = load_task("cmmlu", shared_data, {"split": "dev", "shots": 4,
                                            "subjects": ["agronomy", "virology"]})
    items = _items(task, "zh")
    assert len(items) == 10
    rows = list(csv.DictReader((shared_data / BENCH / "cmmlu/dev/agronomy.csv").open()))
    assert [i.gold for i in items[:5]] == ["ABCD".index(r["Answer"]) for r in rows]
    first = items[0]
    assert first.context.count("答案：") == 5  # 4 demonstrations (the other dev items) + item
    assert first.context.endswith(f"{rows[0]['Question']}\nA. {rows[0]['A']}\nB. {rows[0]['B']}"
                                  f"\nC. {rows[0]['C']}\nD. {rows[0]['D']}\n答案：")
    assert first.context.count(rows[0]["Question"]) == 1
    with pytest.raises(EvalDataError, match="test/agronomy.csv: cmmlu file not found"):
        load_task("cmmlu", shared_data, {"split": "test", "subjects": ["agronomy"]})


def test_agieval_real(shared_data):
    task = load_task("agieval", shared_data)
    keys = {s.key: s for s in task.subsets}
    assert keys["lsat-ar"].language == "en" and keys["gaokao-physics"].language == "zh"
    physics = [json.loads(x) for x in (shared_data / BENCH / "agieval/v1/gaokao-physics.jsonl")
               .open()]
    single = [r for r in physics if isinstance(r["label"], str)]
    assert len(keys["gaokao-physics"].items) == len(single)
    assert task.dropped == {"multi-answer label": len(physics) - len(single)}
    assert [i.gold for i in keys["gaokao-physics"].items] == ["ABCD".index(r["label"])
                                                              for r in single]
    lsat = keys["lsat-ar"].items[0]
    assert lsat.choices == (" (A)", " (B)", " (C)", " (D)", " (E)")
    assert lsat.context.count("Answer Choices:") == 4  # AGIEval gives 3 LSAT demonstrations
    zh = keys["logiqa-zh"].items[0]
    assert zh.context.endswith("答案：从A到D, 我们应选择")
    with pytest.raises(EvalDataError, match="cloze"):
        load_task("agieval", shared_data, {"subtasks": ["math"]})


def test_tydiqa_real(shared_data):
    task = load_task("tydiqa", shared_data, {"split": "train-slice", "languages": ["ko", "sw"]})
    data = json.loads((shared_data / BENCH / "tydiqa_goldp/tydiqa.goldp.ko.train-slice.json")
                      .read_text(encoding="utf-8"))
    qas = [qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    items = _items(task, "ko")
    assert len(items) == len(qas)
    assert items[0].references == tuple(a["text"] for a in qas[0]["answers"])
    assert isinstance(items[0], GenerationItem) and items[0].prompt.endswith("\nAnswer:")
    assert "Korean passage" in items[0].prompt
    assert items[0].prompt.count("Question: ") == 2  # 1-shot
    assert task.stop == ("\n",)


def test_mgsm_real(shared_data):
    task = load_task("mgsm", shared_data, {"languages": ["zh", "bn"], "shots": 2})
    rows = list(csv.reader((shared_data / BENCH / "mgsm/mgsm_bn.tsv").open(encoding="utf-8"),
                           delimiter="\t", quoting=csv.QUOTE_NONE))
    items = _items(task, "bn")
    assert [i.references[0] for i in items] == [r[1] for r in rows]
    assert items[3].prompt.endswith(f"Question: {rows[3][0]}\nAnswer:")
    assert "Bengali" in items[3].prompt and items[3].prompt.count("Question: ") == 3
    # the scorer reads the last number of each generation
    scores = task.scorer(["The answer is 18.", "১৮"], items[:2],
                         next(s for s in task.subsets if s.key == "bn"))
    assert scores == {"exact_match": 100.0 * sum(
        float(r[1]) == 18 for r in rows[:2]) / 2}


def test_flores_real_en_centric_and_any_to_any(shared_data):
    dev = shared_data / BENCH / "flores200/dev"
    kk = (dev / "kaz_Cyrl.dev").read_text(encoding="utf-8").splitlines()
    en = (dev / "eng_Latn.dev").read_text(encoding="utf-8").splitlines()
    task = load_task("flores", shared_data, {"split": "dev", "languages": ["kk"]})
    assert [s.key for s in task.subsets] == ["en-kk", "kk-en"]
    item = _items(task, "kk-en")[5]
    assert item.references == (en[5],)
    assert item.prompt.startswith("Translate the following Kazakh text to English:\n\n")
    assert item.prompt.endswith(f"Kazakh: {kk[5]}\nEnglish:")
    assert item.prompt.count("Kazakh: ") == 2  # 1-shot
    assert task.grouping == "direction" and task.stop == ("\n",)
    seven = ["zh", "ja", "ko", "ar", "de", "fr", "es"]
    any_task = load_task("flores_any", shared_data, {"split": "dev", "languages": seven})
    assert len(any_task.subsets) == 42
    assert all("en" not in s.key.split("-") for s in any_task.subsets)
    with pytest.raises(EvalDataError, match="non-English"):
        load_task("flores_any", shared_data, {"split": "dev", "languages": ["en", "de"]})


# --- our fixtures in the published formats -----------------------------------------------------


def test_mmmlu_fixture():
    task = load_task("mmmlu", FIXTURES, {"path": "mmmlu", "languages": ["de", "zh"]})
    de = _items(task, "de")
    assert [i.gold for i in de] == [1, 2, 0, 1, 2, 1]
    # demonstrations are other questions of the same subject
    assert "about astronomy, in German" in de[0].context
    assert de[0].context.count("Answer:") == 3 and "7 mal 8" not in de[0].context
    assert len(_items(task, "zh")) == 4  # found under test/ as on the hub


def test_mmlu_ceval_arc_fixtures():
    mmlu = load_task("mmlu", FIXTURES, {"path": "mmlu"})
    items = _items(mmlu, "en")
    assert [i.gold for i in items] == [1, 2, 0, 1, 1]
    assert items[0].context.count("Answer:") == 3  # the 2 dev items of astronomy + item
    ceval = load_task("ceval", FIXTURES, {"path": "ceval"})
    citems = _items(ceval, "zh")
    assert [i.gold for i in citems] == [1, 2, 2]
    assert citems[0].context.startswith("以下是中国关于high school physics考试的单项选择题")
    assert "声音在空气中" in citems[0].context  # demonstration from dev/
    arc = load_task("arc", FIXTURES, {"path": "arc", "shots": 2})
    aitems = _items(arc, "en")
    assert [i.gold for i in aitems] == [1, 2]
    assert aitems[0].choices[1] == " carbon dioxide" and arc.primary_metric == "acc_norm"
    assert "Which organ pumps blood" in aitems[0].context  # from the Train file


def test_xstorycloze_fixture():
    task = load_task("xstorycloze", FIXTURES, {"path": "xstorycloze", "languages": ["en", "ru"],
                                               "shots": 5})
    en = _items(task, "en")
    assert [i.gold for i in en] == [0, 1, 0]
    assert en[0].context.endswith("Tom wanted a dog. He saved his pocket money for months. "
                                  "Finally he had enough. He went to the shelter.")
    assert "Lisa planted seeds." in en[0].context  # from the train file
    ru = _items(task, "ru")
    assert ru[0].choices == (" Семья с удовольствием съела торт.",
                             " Маша никогда не видела кухню.")
    assert "Иван опоздал" in ru[0].context  # no train file: another item of the same file


def test_belebele_official_layout_fixture():
    task = load_task("belebele", FIXTURES, {"path": "belebele", "languages": ["zh"]})
    items = _items(task, "zh")
    assert [i.gold for i in items] == [1, 2, 0, 2]
    assert "passage in Chinese" in items[0].context
    assert items[0].context.endswith("Q: 小明几点起床？\nA: 六点\nB: 七点\nC: 八点\nD: 九点"
                                     "\nAnswer:")


def test_wmt16_sgm_and_plain_fixture():
    task = load_task("wmt16", FIXTURES, {"path": "wmt16", "pairs": ["de-en", "ro-en"]})
    de = _items(task, "de-en")
    assert len(de) == 4 and de[1].references == ("The train arrives at eight o'clock.",)
    assert de[1].prompt.endswith("German: Der Zug kommt um acht Uhr an.\nEnglish:")
    assert len(_items(task, "ro-en")) == 3
    with pytest.raises(EvalDataError, match="neither"):
        load_task("wmt16", FIXTURES, {"path": "wmt16", "pairs": ["fi-en"]})


def test_unknown_names_and_bad_files(tmp_path):
    with pytest.raises(EvalDataError, match="unknown task 'xcoppa'"):
        load_task("xcoppa", tmp_path)
    with pytest.raises(EvalDataError, match=r"unknown option\(s\) \['shot'\]"):
        load_task("xcopa", tmp_path, {"shot": 5})
    bad = tmp_path / "xcopa" / "zh"
    bad.mkdir(parents=True)
    (bad / "val.zh.jsonl").write_text('{"premise": "a.", "choice1": "b", "choice2": "c", '
                                      '"question": "effect", "label": 2}\n')
    with pytest.raises(EvalDataError, match=r"val.zh.jsonl:1: label must be 0 or 1"):
        load_task("xcopa", tmp_path, {"path": "xcopa", "languages": ["zh"]})
    with pytest.raises(EvalDataError, match="not found"):
        load_task("mgsm", tmp_path, {"languages": ["en"]})
    assert set(TASKS) >= {"belebele", "xcopa", "xstorycloze", "mmmlu", "agieval", "ceval",
                          "cmmlu", "tydiqa", "flores", "flores_any", "wmt16", "mgsm", "xnli",
                          "mmlu", "arc"}


# --- accuracies through our suite == transformers' ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from hf_fixtures import make_hf_model
    from parity_fixtures import load_hf_weights

    _, hf_model = make_hf_model(tmp_path_factory.mktemp("hf"), vocab=151936, hidden=32, heads=4,
                                kv_heads=2, layers=2)
    return hf_model, load_hf_weights(hf_model)


def _hf_loglikelihoods(hf_model, tokenizer, item: ChoiceItem) -> list[float]:
    """Each choice scored by transformers, tokenised as lm-eval does (the pair encoded whole,
    split at the context's length)."""
    out = []
    for choice in item.choices:
        context_ids = tokenizer.encode(item.context)
        whole = tokenizer.encode(item.context + choice)
        continuation = whole[len(context_ids):]
        inputs = torch.tensor([whole[:-1]])
        start = len(context_ids) - 1
        with torch.no_grad():  # the head only where the continuation is predicted
            hidden = hf_model.model(inputs).last_hidden_state[0, start:]
            logprobs = torch.log_softmax(hf_model.lm_head(hidden).double(), -1)
        out.append(float(sum(logprobs[k, t] for k, t in enumerate(continuation))))
    return out


@pytest.mark.parametrize("name,options,limit", [
    ("xcopa", {"languages": ["zh", "sw"], "shots": 5}, 12),
    ("belebele", {"languages": ["en", "de"], "shots": 1}, 5),
])
def test_accuracy_equals_transformers(shared_data, tiny_models, name, options, limit):
    from marco_jax.data.tokenizer import get_tokenizer
    from marco_jax.evals import metrics
    from marco_jax.evals.engine import Engine
    from marco_jax.evals.suite import evaluate_task

    hf_model, model = tiny_models
    task = load_task(name, shared_data, options)
    engine = Engine(model, batch_size=8, max_len=1024, length_buckets=(512, 1024))
    result, records, _ = evaluate_task(engine, task, limit=limit)
    tokenizer = get_tokenizer()
    by_id = {r["id"]: r for r in records}
    for subset in task.subsets:
        preds, preds_norm, golds = [], [], []
        for item in subset.items[:limit]:
            reference = _hf_loglikelihoods(hf_model, tokenizer, item)
            np.testing.assert_allclose(by_id[item.id]["logprobs"], reference, atol=1e-3,
                                       rtol=1e-5)
            raw, norm = metrics.choice_predictions(reference, item.choices)
            preds.append(raw)
            preds_norm.append(norm)
            golds.append(item.gold)
        row = result["scores"][subset.key]
        assert row["n"] == limit
        assert row["acc"] == 100.0 * metrics.accuracy(preds, golds)
        assert row["acc_norm"] == 100.0 * metrics.accuracy(preds_norm, golds)


def test_tydiqa_official_all_language_file_fixture():
    task = load_task("tydiqa", FIXTURES, {"path": "tydiqa", "languages": ["sw", "fi"]})
    sw, fi = _items(task, "sw"), _items(task, "fi")
    assert [i.references for i in sw] == [("Nairobi",), ("Tanzania",)]
    assert [i.id for i in fi] == ["fi/finnish-2001-0", "fi/finnish-2002-0"]
    assert "Saimaa" in fi[0].prompt and "Helsinki on" not in fi[0].prompt.split("\n\n")[1]
    with pytest.raises(EvalDataError, match="ids 'korean-...'"):
        load_task("tydiqa", FIXTURES, {"path": "tydiqa", "languages": ["ko"]})


def test_truncated_prompts_are_counted(shared_data):
    from types import SimpleNamespace

    from marco_jax.data.tokenizer import get_tokenizer
    from marco_jax.evals.suite import count_truncated

    tokenizer = get_tokenizer()
    task = load_task("belebele", shared_data, {"languages": ["en"]})
    lengths = [len(tokenizer.encode(i.context + " A")) - 1 for i in _items(task, "en")]
    limit = int(np.median(lengths))
    engine = SimpleNamespace(max_len=limit, tokenizer=tokenizer)
    assert count_truncated(engine, task) == sum(n > limit for n in lengths) > 0
    flores = load_task("flores", shared_data, {"split": "dev", "languages": ["kk"],
                                               "max_new_tokens": 16})
    prompts = [len(tokenizer.encode(i.prompt)) for s in flores.subsets for i in s.items]
    engine = SimpleNamespace(max_len=200, tokenizer=tokenizer)
    assert count_truncated(engine, flores) == sum(n > 200 - 16 for n in prompts) > 0
