"""KV-cache decoding throughput: compile time, prefill time and decode tokens/s.

  python bench/bench_generate.py [--preset tiny] [--batch 8] [--prompt-len 128]
      [--new-tokens 128] [--dtype float32] [--temperature 0] [--top-p 1.0] [--checkpoint DIR]

Random weights unless --checkpoint; no stop token, so every row decodes --new-tokens tokens.
Prints one line per figure; run it on the accelerator you want numbers for (CPU by default
under JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", default=None, help="converted checkpoint dir (overrides preset)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    args = p.parse_args()

    from marco_jax.infer import generate
    if args.checkpoint:
        from marco_jax.checkpoint import load_model
        model = load_model(args.checkpoint, dtype=args.dtype)
    else:
        from marco_jax.model.config import get_preset
        from marco_jax.model.qwen2 import init_model
        model = init_model(get_preset(args.preset, dtype=args.dtype), seed=0)
    cfg = model.config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 151_000, (args.batch, args.prompt_len)).astype(np.int32)
    lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, args.batch)
    lengths[0] = args.prompt_len
    run = lambda n: jax.block_until_ready(generate(  # noqa: E731
        model, tokens, n, prompt_lengths=lengths, eos_ids=(), temperature=args.temperature,
        top_p=args.top_p).tokens)

    t0 = time.perf_counter()
    run(args.new_tokens)
    first = time.perf_counter() - t0
    run(1)  # compiles the prefill-only shape
    t0 = time.perf_counter()
    run(1)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(args.new_tokens)
    total = time.perf_counter() - t0
    decode = max(total - prefill, 1e-9)
    print(f"device: {jax.devices()[0].device_kind}; model: {cfg.num_params() / 1e6:.1f}M params, "
          f"{cfg.num_hidden_layers} layers, dtype {cfg.dtype}")
    print(f"batch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens}")
    print(f"first call (compile + run): {first:.2f} s")
    print(f"prefill: {prefill * 1e3:.1f} ms ({args.batch * args.prompt_len / prefill:,.0f} "
          "prompt tokens/s)")
    print(f"decode: {decode / (args.new_tokens - 1) * 1e3:.2f} ms/step, "
          f"{args.batch * (args.new_tokens - 1) / decode:,.0f} tokens/s")


if __name__ == "__main__":
    main()
