"""Greedy decoding with the fused decode layer vs the unfused step, one process, taking turns.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_decode_layer.py
        [--shapes vocab-heavy,layer-heavy] [--batches 1,8] [--param-dtypes float32,bfloat16]
        [--prompt-len 128] [--new-tokens 128] [--rounds 9]

The fused side runs each decoder layer's one-token step as one kernel call
(marco_jax/model/decode_layer.py); the unfused side, traced with MARCO_FUSED_DECODE_LAYER=0, runs
the packed matmul and decode attention kernels with XLA's fusions between them, as before the
fusion. Both are compiled in this process (separately traced: jax caches traces per function,
so each side jits a function of its own), then every round times one whole `generate` of each
(prefill + --new-tokens tokens, the prefill identical on both sides), the order reversed every
other round. Printed per shape, batch and weight dtype: each side's median whole-run time, the
median of the per-round ratios fused / unfused and their quartiles (< 1: the fused side is
faster), the per-step difference ((fused - unfused) / new tokens) and how many generated tokens
agree. Why in one process: this shared VM's speed drifts by 10-30% between minutes, more than
the difference measured (two processes, one per side, disagreed in sign from run to run).

Shapes as in `bench_train_vs_torch.py`; float32 compute, prompts left-padded.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_train_vs_torch import SHAPES  # noqa: E402
from common import (  # noqa: E402
    host_malloc_line,
    left_padded_prompts,
    parse_list,
    reexec_like_the_clis,
    times_in_turns,
)
from flax import nnx  # noqa: E402

from marco_jax.config.cli import fail  # noqa: E402
from marco_jax.infer.sampling import SamplingParams  # noqa: E402
from marco_jax.model.config import get_preset  # noqa: E402
from marco_jax.model.native import kernels_available  # noqa: E402
from marco_jax.model.qwen2 import init_model  # noqa: E402

# The module (`marco_jax.infer.generate` is also the name of its function in the package).
gen = importlib.import_module("marco_jax.infer.generate")
SIDES = {"fused": "1", "unfused": "0"}


def compiled_sides(model, tokens: np.ndarray, mask: np.ndarray, new_tokens: int) -> dict:
    """side -> a call decoding `new_tokens` greedily (returns the tokens), each side traced under
    its MARCO_FUSED_DECODE_LAYER."""
    graphdef, state = nnx.split(model)
    head = gen.decode_head(graphdef, state, pack=True,
                                       screen=gen.screens_head(model))
    layers = gen.decode_layers(graphdef, state, pack=True)
    stop = np.full((4,), -1, np.int32)
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0)
    calls = {}
    for side, flag in SIDES.items():
        os.environ["MARCO_FUSED_DECODE_LAYER"] = flag

        def fresh(*args, **kwargs):
            return gen._decode(*args, **kwargs)

        jitted = jax.jit(fresh, static_argnums=0,
                         static_argnames=("max_new_tokens", "sampling", "vocab_limit"))

        def call(jitted=jitted):
            out = jitted(graphdef, state, head, layers, tokens, mask, stop, np.int32(0),
                         jax.random.key(0), max_new_tokens=new_tokens, sampling=greedy,
                         vocab_limit=None)
            return np.asarray(out.tokens)
        call()  # compiles under this side's flag
        calls[side] = call
    os.environ.pop("MARCO_FUSED_DECODE_LAYER")
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--param-dtypes", default="float32,bfloat16")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    shapes = parse_list("--shapes", args.shapes, list(SHAPES))
    batches = parse_list("--batches", args.batches, cast=int)
    dtypes = parse_list("--param-dtypes", args.param_dtypes, ["float32", "bfloat16"])
    if min(batches) < 1 or args.prompt_len < 1 or args.new_tokens < 1 or args.rounds < 2:
        fail(f"--batches {args.batches} --prompt-len {args.prompt_len} --new-tokens "
             f"{args.new_tokens} --rounds {args.rounds}: expected batches, lengths >= 1 and "
             "rounds >= 2")
    if not kernels_available():
        fail("the CPU kernels are not available here (no C++ compiler, or MARCO_CPU_KERNELS=0): "
             "nothing to compare")
    print(host_malloc_line())
    print(f"{os.cpu_count()} CPU cores; greedy, prompt {args.prompt_len} (left-padded rows) + "
          f"{args.new_tokens} new tokens; {args.rounds} rounds, the sides taking turns")
    print(f"{'shape':12s} {'batch':>5s} {'weights':8s} {'fused ms':>9s} {'unfused ms':>10s} "
          f"{'fused/unfused [quartiles]':>27s} {'per step us':>11s} {'tokens equal':>12s}")
    for shape in shapes:
        preset, overrides = SHAPES[shape]
        for dtype in dtypes:
            cfg = get_preset(preset, dtype="float32", param_dtype=dtype, **overrides)
            model = init_model(cfg, seed=0)
            for batch in batches:
                tokens, lengths = left_padded_prompts(cfg.vocab_size, batch, args.prompt_len)
                mask = (np.arange(args.prompt_len)[None]
                        >= args.prompt_len - lengths[:, None]).astype(np.int32)
                calls = compiled_sides(model, tokens, mask, args.new_tokens)
                # One untimed run each after the compiling one (its tokens compared below).
                outs = {side: call() for side, call in calls.items()}
                times = times_in_turns(calls, args.rounds)
                f, u = (np.asarray(times[side]) for side in SIDES)
                ratio, step_us = f / u, (f - u) / args.new_tokens * 1e6
                q1, mid, q3 = np.percentile(ratio, [25, 50, 75])
                same = (outs["fused"] == outs["unfused"]).mean()
                print(f"{shape:12s} {batch:5d} {dtype:8s} {np.median(f) * 1e3:9.1f} "
                      f"{np.median(u) * 1e3:10.1f} {mid:13.3f} [{q1:.3f}, {q3:.3f}] "
                      f"{np.median(step_us):+11.1f} {same:12.1%}")


if __name__ == "__main__":
    reexec_like_the_clis()
    main()
