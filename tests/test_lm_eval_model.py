"""Our lm-eval model `marco_jax` against lm-eval's own `hf` model on the same tiny real-vocabulary
Qwen2 weights (HF dir + offline HF tokenizer for `hf`, our converted checkpoint for `marco_jax`):
identical per-item results on three tasks over local files (multiple choice, greedy generation
with stop strings, rolling perplexity)."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import make_hf_model
from hf_tokenizer_reference import build_hf_qwen2_tokenizer

from marco_jax.convert.hf_to_ours import convert_hf_to_orbax

# `datasets` reads these when imported (lm_eval imports it): set them first.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from marco_jax.evals.lm_eval_model import MarcoJaxLM  # noqa: E402  (registers "marco_jax")

EOT = 151643
REAL_TOKENS = 151646
MAX_LENGTH = 64  # short, so the perplexity docs need several rolling windows


def _write_tasks(folder, shared_data) -> list[str]:
    rows = []
    for lang in ("et", "zh", "sw"):
        path = shared_data / "benchmarks" / "xcopa" / lang / f"val.{lang}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines()[:6]:
            item = json.loads(line)
            connector = "because" if item["question"] == "cause" else "therefore"
            rows.append({"context": item["premise"].rstrip(".。") + " " + connector,
                         "choices": [item["choice1"], item["choice2"]], "label": item["label"]})
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    prompts = []
    for lang in ("eng_Latn", "deu_Latn", "fra_Latn"):
        lines = (shared_data / "benchmarks" / "flores200" / "dev" / f"{lang}.dev").read_text(
            encoding="utf-8").splitlines()
        prompts += [{"prompt": f"Sentence: {s}\nTranslation:", "answer": s} for s in lines[:4]]
    (folder / "gen.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False)
                                                for r in prompts))
    docs = []
    for lang in ("en", "et", "zh", "sw"):
        lines = (shared_data / "text" / "leipzig_sentences" / f"{lang}.txt").read_text(
            encoding="utf-8").splitlines()
        docs += [{"text": " ".join(lines[i:i + 3])} for i in (100, 200)]
    (folder / "ppl.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in docs))

    def data(name):
        return (f"dataset_path: json\ndataset_kwargs:\n  cache_dir: {folder / 'hf_cache'}\n"
                f"  data_files:\n    test: {folder / name}\n")

    (folder / "local_mc.yaml").write_text(data("mc.jsonl") + textwrap.dedent("""\
        task: local_mc
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{context}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        metric_list:
          - metric: acc
          - metric: acc_norm
        """))
    (folder / "local_gen.yaml").write_text(data("gen.jsonl") + textwrap.dedent("""\
        task: local_gen
        test_split: test
        output_type: generate_until
        doc_to_text: "{{prompt}}"
        doc_to_target: "{{answer}}"
        generation_kwargs:
          until: ["\\n", "."]
          max_gen_toks: 12
          do_sample: false
        metric_list:
          - metric: exact_match
        """))
    (folder / "local_ppl.yaml").write_text(data("ppl.jsonl") + textwrap.dedent("""\
        task: local_ppl
        test_split: test
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """))
    return ["local_mc", "local_gen", "local_ppl"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_eval_model")
    hf_dir, hf = make_hf_model(tmp, vocab=151936, hidden=32, heads=4, kv_heads=2, layers=2,
                               tie=False, seed=5)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # context-dependent greedy output (see sharpen)
            if name.endswith(("q_proj.weight", "k_proj.weight", "gate_proj.weight",
                              "up_proj.weight")):
                p.mul_(6.0)
        # Zero lm-head rows past the real tokens: neither side may emit an undecodable id.
        hf.lm_head.weight[REAL_TOKENS:] = 0.0
    hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id = None, EOT, EOT
    hf.generation_config.bos_token_id = None
    hf.generation_config.eos_token_id = hf.generation_config.pad_token_id = EOT
    hf.save_pretrained(hf_dir, safe_serialization=True)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=build_hf_qwen2_tokenizer(),
                                               eos_token="<|endoftext|>",
                                               pad_token="<|endoftext|>")
    tok.save_pretrained(hf_dir)
    ours = tmp / "ours"
    convert_hf_to_orbax(hf_dir, ours, dtype="float32")
    return hf_dir, ours


def _samples(results, task):
    return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def test_marco_jax_equals_hf_on_local_tasks(checkpoints, tmp_path, shared_data):
    hf_dir, ours = checkpoints
    tasks = _write_tasks(tmp_path, shared_data)
    manager = TaskManager(include_path=str(tmp_path))
    common = dict(tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0,
                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32,max_length={MAX_LENGTH}",
        device="cpu", batch_size=8, **common)
    mine = lm_eval.simple_evaluate(
        model="marco_jax",
        model_args=f"checkpoint={ours},dtype=float32,max_length={MAX_LENGTH},"
                   "length_buckets=16:32:64",
        batch_size=4, **common)

    mc_theirs, mc_mine = _samples(theirs, "local_mc"), _samples(mine, "local_mc")
    assert len(mc_mine) == 18
    for a, b in zip(mc_theirs, mc_mine, strict=True):
        np.testing.assert_allclose([r[0][0] for r in b["resps"]], [r[0][0] for r in a["resps"]],
                                   atol=1e-4)
        assert b["acc"] == a["acc"] and b["acc_norm"] == a["acc_norm"]
    assert mine["results"]["local_mc"]["acc,none"] == theirs["results"]["local_mc"]["acc,none"]

    gen_theirs, gen_mine = _samples(theirs, "local_gen"), _samples(mine, "local_gen")
    texts = [s["resps"][0][0] for s in gen_mine]
    assert texts == [s["resps"][0][0] for s in gen_theirs]
    assert len(set(texts)) > 1 and any(texts)  # context-dependent, non-empty generations

    ppl_theirs, ppl_mine = _samples(theirs, "local_ppl"), _samples(mine, "local_ppl")
    for a, b in zip(ppl_theirs, ppl_mine, strict=True):
        # Whole-document sums of several hundred nats, accumulated in float32 on both sides
        # (one float32 ulp at 750 is 6e-5): 1e-4 plus a float32-level relative term.
        np.testing.assert_allclose(b["resps"][0][0], a["resps"][0][0], atol=1e-4, rtol=1e-6)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        np.testing.assert_allclose(mine["results"]["local_ppl"][metric],
                                   theirs["results"]["local_ppl"][metric], rtol=1e-6)


def test_bad_model_args_are_named():
    with pytest.raises(ValueError, match="unknown \\['nonsense'\\]"):
        MarcoJaxLM(checkpoint="x", nonsense=1)
    with pytest.raises(ValueError, match="exactly one of"):
        MarcoJaxLM()

