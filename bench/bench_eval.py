"""Eval throughput, ours vs the references, side by side in one run on the same model and items:

1. multiple choice: XCOPA items (real data) through lm-eval's `hf` model (HFLM) and through our
   `marco_jax` lm-eval model (Engine: length buckets, packed rows), both via lm-eval's
   `loglikelihood` on the same Instances; items/s warm (and the first, compiling, run), and the
   largest per-request log-likelihood difference;
2. greedy decoding: the same FLORES prompts through transformers' `generate` (left-padded batch)
   and our `Engine.generate_tokens`, at batch 1 and 8; tokens/s warm, tokens asserted identical.

  python bench/bench_eval.py [--hidden 256] [--layers 4] [--langs et,zh,sw,th] [--per-lang 50]
      [--batch-size 16] [--new-tokens 64] [--decode-batches 1,8] [--device cpu|cuda]

The model is a random Qwen2 with the real 151,936-row vocabulary (so real text tokenises), its
lm-head rows past the 151,646 real tokens zeroed so neither side emits an undecodable id; the HF
side uses an offline HF tokenizer built from the same ranks (tests/hf_tokenizer_reference.py).
Both run in float32. Throughput depends on the machine: print it with the numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the offline HF Qwen2 tokenizer lives with the tests
sys.path.insert(0, str(ROOT / "bench"))

from common import host_malloc_line, reexec_like_the_clis  # noqa: E402
from hf_tokenizer_reference import build_hf_qwen2_tokenizer  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from marco_jax.checkpoint import load_model  # noqa: E402
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax  # noqa: E402
from marco_jax.data.tokenizer import get_tokenizer  # noqa: E402
from marco_jax.evals.engine import Engine  # noqa: E402
from marco_jax.evals.lm_eval_model import MarcoJaxLM  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
EOT, REAL_TOKENS = 151643, 151646


def build_models(tmp: Path, hidden: int, layers: int, device: str):
    config = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 2),
        num_key_value_heads=max(hidden // 128, 1), tie_word_embeddings=False,
        max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=EOT,
        pad_token_id=EOT, use_sliding_window=False)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(("q_proj.weight", "k_proj.weight", "gate_proj.weight",
                                "up_proj.weight")):
                p.copy_(0.3 * torch.randn_like(p))  # peaked attention: context-dependent output
            else:
                p.copy_(0.05 * torch.randn_like(p))
        hf.lm_head.weight[REAL_TOKENS:] = 0.0
    hf_dir = tmp / "hf"
    hf.save_pretrained(hf_dir, safe_serialization=True)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=build_hf_qwen2_tokenizer(),
                                               eos_token="<|endoftext|>",
                                               pad_token="<|endoftext|>")
    tok.save_pretrained(hf_dir)
    convert_hf_to_orbax(hf_dir, tmp / "ours", dtype="float32")
    return hf.to(device), tok, hf_dir, load_model(tmp / "ours", dtype="float32")


def xcopa_requests(langs: list[str], per_lang: int) -> list[tuple[str, str]]:
    requests = []
    for lang in langs:
        lines = (SHARED / "benchmarks" / "xcopa" / lang / f"val.{lang}.jsonl").read_text(
            encoding="utf-8").splitlines()
        for line in lines[:per_lang]:
            item = json.loads(line)
            connector = "because" if item["question"] == "cause" else "therefore"
            context = item["premise"].rstrip(".。") + " " + connector
            requests += [(context, " " + item["choice1"]), (context, " " + item["choice2"])]
    return requests


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_multiple_choice(hflm: HFLM, ours: MarcoJaxLM, requests: list[tuple[str, str]]) -> None:
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i)
                 for i, r in enumerate(requests)]
    items = len(requests) // 2
    theirs, hf_first = timed(lambda: hflm.loglikelihood(instances, disable_tqdm=True))
    _, hf_warm = timed(lambda: hflm.loglikelihood(instances, disable_tqdm=True))
    mine, our_first = timed(lambda: ours.loglikelihood(instances, disable_tqdm=True))
    _, our_warm = timed(lambda: ours.loglikelihood(instances, disable_tqdm=True))
    diff = max(abs(a[0] - b[0]) for a, b in zip(theirs, mine, strict=True))
    acc = lambda res: np.mean([res[2 * i][0] < res[2 * i + 1][0]  # noqa: E731
                               for i in range(items)])
    print(f"\n== multiple choice: {items} XCOPA items ({len(requests)} loglikelihood requests), "
          f"batch {ours.engine.batch_size}, buckets {ours.engine.buckets}")
    print(f"{'':24}{'first run (s)':>15}{'warm (s)':>10}{'items/s warm':>14}")
    print(f"{'lm-eval hf (torch)':24}{hf_first:15.2f}{hf_warm:10.2f}{items / hf_warm:14.1f}")
    print(f"{'marco_jax (Engine)':24}{our_first:15.2f}{our_warm:10.2f}{items / our_warm:14.1f}")
    print(f"speed-up warm: {hf_warm / our_warm:.2f}x; max |loglik diff| {diff:.2e}; "
          f"P(choice2) picked: hf {acc(theirs):.3f} ours {acc(mine):.3f}")


def hf_generate(hf, tok, prompts: list[list[int]], new_tokens: int, device: str) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOT, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    with torch.no_grad():
        out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          top_k=None, top_p=None, pad_token_id=EOT, eos_token_id=None)
    return out[:, width:].cpu().tolist()


def bench_decode(hf, tok, model, prompts: list[str], batches: list[int], new_tokens: int,
                 device: str) -> None:
    ours_tok = get_tokenizer()
    print(f"\n== greedy decode: {new_tokens} new tokens per prompt, FLORES prompts, no stop")
    print(f"{'batch':>6}{'prompt toks':>12}{'hf s':>8}{'hf tok/s':>10}{'ours s':>8}"
          f"{'ours tok/s':>11}{'ours 1st s':>11}{'speed-up':>9}  tokens identical")
    for batch in batches:
        ids = [ours_tok.encode(p) for p in prompts[:batch]]
        engine = Engine(model, ours_tok, batch_size=batch, max_len=512,
                        length_buckets=(64, 128, 256, 512))
        run = functools.partial(engine.generate_tokens, ids, max_new_tokens=new_tokens,
                                stop_token_ids=())
        _, first = timed(run)
        (mine, _), warm = timed(run)
        hf_generate(hf, tok, ids, 4, device)  # warm-up
        theirs, hf_s = timed(functools.partial(hf_generate, hf, tok, ids, new_tokens, device))
        same = mine == theirs
        n = batch * new_tokens
        print(f"{batch:6d}{max(map(len, ids)):12d}{hf_s:8.2f}{n / hf_s:10.1f}{warm:8.2f}"
              f"{n / warm:11.1f}{first:11.2f}{hf_s / warm:8.2f}x  {same}")
        if not same:
            rows = [i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]
            raise SystemExit(f"decode mismatch at batch {batch}, rows {rows}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--langs", default="et,zh,sw,th")
    p.add_argument("--per-lang", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--decode-batches", default="1,8")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        hf, tok, hf_dir, model = build_models(Path(tmp), args.hidden, args.layers, args.device)
        cfg = model.config
        print(f"jax device: {jax.devices()[0].device_kind}; torch device: {args.device} "
              f"(threads {torch.get_num_threads()}); model: hidden {cfg.hidden_size}, "
              f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads / "
              f"{cfg.num_key_value_heads} kv, vocab {cfg.vocab_size}, "
              f"{cfg.num_params() / 1e6:.1f}M params, float32; {host_malloc_line()}")
        hflm = HFLM(pretrained=hf, tokenizer=tok, batch_size=args.batch_size, device=args.device,
                    max_length=2048)
        ours = MarcoJaxLM(model=model, batch_size=args.batch_size, max_length=2048)
        bench_multiple_choice(hflm, ours, xcopa_requests(args.langs.split(","), args.per_lang))
        lines = (SHARED / "benchmarks" / "flores200" / "dev" / "eng_Latn.dev").read_text(
            encoding="utf-8").splitlines()
        prompts = [f"English: {s}\nGerman:" for s in lines[:8]]
        bench_decode(hf, tok, model, prompts, [int(b) for b in args.decode_batches.split(",")],
                     args.new_tokens, args.device)


if __name__ == "__main__":
    reexec_like_the_clis()
    main()
