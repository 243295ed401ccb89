"""Greedy KV-cache decoding: marco_jax vs transformers' `generate`, same weights, one run, and
both against the memory-bandwidth roofline of this machine.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_generate.py [--batches 1,8]
        [--shapes vocab-heavy,layer-heavy] [--prompt-len 128] [--new-tokens 128]
        [--param-dtype float32,bfloat16] [--skip-hf]

Shapes as in `bench_train_vs_torch.py`: vocab-heavy = the `tiny-20m` preset (151,936-row
vocabulary, hidden 128, 4 layers), layer-heavy = vocab 32,000, hidden 384, 6 layers, 6/2 heads.
A random `transformers.Qwen2ForCausalLM` is saved and converted with our converter, so both sides
decode the same fp32 weights; prompts are left-padded (lengths between half and all of
--prompt-len), no stop token, and the generated tokens are asserted identical (fp32 weights).

Roofline: a decode step must read every weight once (the embedding's rows for the fed tokens
only, unless it is tied to the lm head) and the filled part of the KV cache; at the bandwidth
measured here (a jitted reduction over a 1 GiB fp32 array) that bounds tokens/s at
batch x bandwidth / bytes per step. `--param-dtype bfloat16` stores our weights in bf16 (compute
stays fp32), halving the weight bytes; its tokens are checked against the fp32 run's count only.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_vs_torch import SHAPES  # noqa: E402

from marco_jax.checkpoint import load_model  # noqa: E402
from marco_jax.config.cli import fail  # noqa: E402
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax  # noqa: E402
from marco_jax.infer import generate  # noqa: E402
from marco_jax.model.config import Qwen2Config, get_preset  # noqa: E402


def measure_read_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s of a jitted sum over a `gib` GiB fp32 array (best of 5)."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return x.nbytes / best


def bytes_per_step(cfg: Qwen2Config, batch: int, cache_slots: int, param_bytes: int) -> float:
    """HBM/DRAM bytes one decode step must read: weights (embedding rows only for the fed tokens
    when untied) + the whole KV cache (our cache attends over all its slots, masked)."""
    n = cfg.num_params()
    embed = cfg.vocab_size * cfg.hidden_size
    weights = (n if cfg.tie_word_embeddings else n - embed + batch * cfg.hidden_size)
    kv = (2 * cfg.num_hidden_layers * batch * cache_slots * cfg.num_key_value_heads
          * cfg.dim_per_head * 4)
    return weights * param_bytes + kv


def build(tmp: Path, name: str):
    import torch
    import transformers

    preset, overrides = SHAPES[name]
    cfg = get_preset(preset, dtype="float32", param_dtype="float32", **overrides)
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).float().eval()
    with torch.no_grad():  # peaked attention, so the next token depends on the context
        for pname, p in hf.named_parameters():
            if pname.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(10.0)
    hf.save_pretrained(tmp / name / "hf", safe_serialization=True)
    convert_hf_to_orbax(tmp / name / "hf", tmp / name / "ours", dtype="float32")
    return cfg, hf


def hf_generate(hf, tokens: np.ndarray, lengths: np.ndarray, new_tokens: int) -> np.ndarray:
    import torch

    ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.from_numpy((np.arange(tokens.shape[1])[None] >= tokens.shape[1]
                             - lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None,
                          pad_token_id=0, eos_token_id=None)
    return out[:, tokens.shape[1]:].numpy()


def ours_generate(model, tokens: np.ndarray, lengths: np.ndarray, new_tokens: int) -> np.ndarray:
    return np.asarray(generate(model, tokens, new_tokens, prompt_lengths=lengths,
                               eos_ids=()).tokens)


def timed(fn, repeats: int = 2) -> tuple[object, float]:
    out, best = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--param-dtype", default="float32,bfloat16",
                   help="our weight dtypes to run (compute is fp32)")
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    unknown = sorted(set(args.shapes.split(",")) - set(SHAPES))
    if unknown:
        fail(f"--shapes {','.join(unknown)}: expected a comma list of {', '.join(SHAPES)}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        fail(f"--batches {args.batches!r}: expected a comma list of integers, e.g. 1,8")
    bw = measure_read_bandwidth()
    print(f"{os.cpu_count()} CPU cores; measured read bandwidth {bw / 1e9:.1f} GB/s; prompt "
          f"{args.prompt_len} (left-padded rows), {args.new_tokens} new tokens, greedy")
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    for name in args.shapes.split(","):
        cfg, hf = build(tmp, name)
        print(f"\n== {name}: {cfg.num_params() / 1e6:.1f}M params, vocab {cfg.vocab_size}, "
              f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, tied "
              f"{cfg.tie_word_embeddings}")
        print(f"{'batch':>5} {'side':28s} {'decode tok/s':>12} {'% roofline':>10} "
              f"{'vs hf':>6}  tokens")
        for batch in batches:
            rng = np.random.default_rng(batch)
            tokens = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
            lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, batch)
            lengths[0] = args.prompt_len
            tokens[np.arange(args.prompt_len)[None] < args.prompt_len - lengths[:, None]] = 0
            slots = args.prompt_len + args.new_tokens - 1
            n_new = batch * args.new_tokens
            ref = None
            if not args.skip_hf:
                hf_generate(hf, tokens, lengths, 2)  # warm-up
                ref, hf_s = timed(functools.partial(hf_generate, hf, tokens, lengths,
                                                     args.new_tokens))
                roof = batch * bw / bytes_per_step(cfg, batch, slots, 4)
                print(f"{batch:5d} {'transformers generate fp32':28s} {n_new / hf_s:12.1f} "
                      f"{n_new / hf_s / roof:10.1%} {'':>6}")
                hf_tps = n_new / hf_s
            for dtype in args.param_dtype.split(","):
                model = load_model(tmp / name / "ours", dtype="float32", param_dtype=dtype)
                run = functools.partial(ours_generate, model, tokens, lengths, args.new_tokens)
                run()  # compile
                mine, s = timed(run)
                roof = batch * bw / bytes_per_step(cfg, batch, slots,
                                                   jnp.dtype(dtype).itemsize)
                same = "-" if ref is None else (
                    "identical" if np.array_equal(mine, ref)
                    else f"{np.mean(mine == ref):.1%} equal")
                vs = "" if ref is None else f"{n_new / s / hf_tps:5.2f}x"
                print(f"{batch:5d} {'marco_jax ' + dtype:28s} {n_new / s:12.1f} "
                      f"{n_new / s / roof:10.1%} {vs:>6}  {same}")


if __name__ == "__main__":
    main()
