"""Training MFU and greedy decoding on one accelerator, in one run, beside the peers: the
prepared device check for a GPU (or TPU) host.

    python bench/bench_device.py [--sizes 0.5b,1.5b] [--rows 8] [--steps 6]
        [--decode-sizes 0.5b,1.5b] [--decode-batches 1,8,64] [--prompt-len 128]
        [--new-tokens 128] [--remat POLICY] [--attention auto,xla] [--skip-hf] [--json out.json]
        [--smoke]

Training: each size's shipped stage-I CPT config (configs/cpt_<size>_stage1.py: Qwen2 dims, fp32
params + AdamW, bf16 compute, bf16 logits, the config's remat policy and loss chunk, attention
`auto`, i.e. cuDNN on a GPU, splash on a TPU) on one device, random init, `--rows` x 4096 random
tokens per step, no accumulation (the rows are the micro-batch). Printed: compile seconds, step
seconds (median of `--steps`), tokens/s and MFU = model FLOPs per token (6N + causal attention,
`Qwen2Config.train_flops_per_token`, the trainer's own figure) x tokens/s / the chip's published
dense bf16 peak (`marco_jax.train.flops.PEAK_FLOPS`; H100/H200 989 TFLOP/s). Recompute is not
model work (full remat would cap MFU near 75% of the hardware's rate; the shipped configs save
the weight matmuls and recompute the rest). `--attention` trains each
size once per listed implementation: on a GPU `auto` is cuDNN, which receives our packed-row
(segment-id) mask as a dense [B, 1, T, T] bias; jax's cuDNN wrapper then also computes that bias's
gradient (`should_export_dbias` is always true in jax 0.10), so `--attention auto,xla` shows what
that costs against XLA's own attention.

Peer for training (printed beside ours): MaxText's published GPU figure, Llama2-7B on one A3 VM
(8 x H100-80GB), 492 TFLOP/s per chip = 49.7% of 989 (bf16, 4 x 4096 rows per device, fsdp 8,
cudnn_flash_te attention, remat `minimal_flash`, unscanned layers; MaxText/configs/a3/llama_2_7b/
README.md and 1vm.sh). MaxText publishes no Qwen2-0.5B/1.5B GPU figure; small models reach a
lower MFU than 7B on the same chip (smaller matmuls), so the comparison is a bar, not like for like.

Decoding: a random `transformers.Qwen2ForCausalLM` of the size's dims in bf16 is saved and
converted with our converter, so both sides decode the same weights; left-padded random prompts,
greedy, no stop token. Ours: `marco_jax.infer.generate`, bf16 weights and compute (compile
excluded). Each side is timed at 1 and at `--new-tokens` new tokens per row (best of 2 rounds,
the sides taking turns: `common.time_decode_sides`): the first run is the prefill, each further
token's step is the difference over the extra tokens, and tokens/s = batch / step.
transformers' `generate` runs beside it, timed the same way, when torch
sees a GPU (else, or with `--skip-hf`, ours alone; without transformers ours decodes random
weights of its own). Token agreement is reported, not asserted (bf16 kernels differ). Roofline:
every step reads all weights once plus the KV cache, at the device bandwidth measured here (a
jitted sum over 4 GiB of bf16), so a step takes >= bytes per step / bandwidth.

`--smoke` shrinks every model to a 2-layer toy and the sequence to 128, so the script runs on a
CPU in seconds (how it is tested; its figures mean nothing).

On a host whose Python already has jax (with its CUDA/TPU plugin), flax, optax, orbax, torch and
transformers, only ml-collections is missing: `pip install ml-collections==1.1.0` (or its wheel
from `pip download --no-deps`), then `PYTHONPATH=. python bench/bench_device.py --json out.json`.
Budget: two training compiles and 12 decode compiles; minutes, not tens of minutes, on an H100.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.config import load_config_file
from marco_jax.config.cli import fail
from marco_jax.config.schema import CHOICES
from marco_jax.model.config import Qwen2Config, from_experiment, resolve_attention_impl
from marco_jax.model.qwen2 import init_model
from marco_jax.train.flops import peak_flops_per_device
from marco_jax.train.lm import LanguageModeling
from marco_jax.train.optimizer import make_optimizer, make_schedule
from marco_jax.train.state import TrainState
from marco_jax.train.step import make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    decode_bytes_per_step,
    hf_generate,
    left_padded_prompts,
    measure_read_bandwidth,
    parse_list,
    peaked_hf_model,
    time_decode_sides,
)

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("0.5b", "1.5b", "7b", "72b")
MAXTEXT_GPU = {"system": "MaxText Llama2-7B, 1 x A3 (8 x H100-80GB)", "tflops_per_chip": 492.0,
               "peak_tflops": 989.0}
SMOKE_DIMS = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "bos_token_id": 1, "eos_token_id": 2}


def size_config(size: str, smoke: bool, remat: str | None = None, attention: str | None = None):
    """(experiment config, model config) of the shipped stage-I config of `size`."""
    exp = load_config_file(ROOT / "configs" / f"cpt_{size}_stage1.py")
    model = from_experiment(exp.model)
    if smoke:
        model = model.replace(**SMOKE_DIMS)
    if remat:
        model = model.replace(remat_policy=remat)
    if attention:
        model = model.replace(attention_impl=attention)
    return exp, model


def lm_batch(tokens: np.ndarray) -> dict:
    b, t1 = tokens.shape
    t = t1 - 1
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
             "segment_ids": np.ones((b, t), np.int32), "loss_mask": np.ones((b, t), np.int32),
             "source_ids": np.zeros((b, t), np.int32)}
    return {k: jnp.asarray(v) for k, v in batch.items()}


def bench_train(size: str, attention: str, args: argparse.Namespace, peak: float) -> dict:
    exp, cfg = size_config(size, args.smoke, args.remat, attention)
    seq = 128 if args.smoke else exp.data.seq_len
    graphdef, state = nnx.split(init_model(cfg, seed=0))
    tx = make_optimizer(exp.optim, exp.train.steps)
    train_state = TrainState.create(nnx.to_pure_dict(state), tx)
    del state
    objective = LanguageModeling((), exp.train.loss_chunk)
    step = jax.jit(make_train_step(graphdef, tx, objective,
                                   make_schedule(exp.optim, exp.train.steps)), donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = lm_batch(rng.integers(0, cfg.vocab_size, (args.rows, seq + 1)).astype(np.int32))
    t0 = time.perf_counter()
    train_state, m = step(train_state, batch)
    first_loss = float(m["loss_sum"]) / float(m["weight"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_state, m = step(train_state, batch)
        float(m["loss_sum"])  # blocks until the step is done
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_s = args.rows * seq / step_s
    flops_per_token = cfg.train_flops_per_token(seq)
    return {"size": size, "params": cfg.num_params(), "rows": args.rows, "seq_len": seq,
            "remat": cfg.remat_policy,
            "attention": resolve_attention_impl(cfg.attention_impl, jax.devices()[0].platform,
                                                cfg.dtype, seq),
            "compile_s": compile_s, "step_s": step_s, "tokens_per_s": tokens_per_s,
            "model_flops_per_token": flops_per_token,
            "mfu": flops_per_token * tokens_per_s / peak, "first_loss": first_loss,
            "last_loss": float(m["loss_sum"]) / float(m["weight"])}


def decode_models(cfg: Qwen2Config, tmp: Path, use_hf: bool):
    """(our model, transformers model or None) with the same random bf16 weights."""
    from marco_jax.checkpoint import load_model

    if not use_hf:
        return init_model(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"), seed=0), None
    import torch

    from marco_jax.convert.hf_to_ours import convert_hf_to_orbax

    hf = peaked_hf_model(cfg, torch.bfloat16)
    hf.save_pretrained(tmp / "hf", safe_serialization=True)
    convert_hf_to_orbax(tmp / "hf", tmp / "ours", dtype="bfloat16")
    ours = load_model(tmp / "ours", dtype="bfloat16", param_dtype="bfloat16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return ours, hf.to(device)


def _ours_tokens(model, tokens: np.ndarray, lengths: np.ndarray, new_tokens: int) -> np.ndarray:
    from marco_jax.infer import generate

    return np.asarray(generate(model, tokens, new_tokens, prompt_lengths=lengths,
                               eos_ids=()).tokens)


def bench_decode(size: str, args: argparse.Namespace, bandwidth: float, use_hf: bool) -> list:
    _, cfg = size_config(size, args.smoke)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_device_") as tmp:
        ours, hf = decode_models(cfg, Path(tmp), use_hf)
    for batch in args.decode_batches:
        tokens, lengths = left_padded_prompts(cfg.vocab_size, batch, args.prompt_len)
        # the filled KV slots, mean over the decode steps (empty ones need no read)
        slots = args.prompt_len + args.new_tokens // 2
        roof_step = decode_bytes_per_step(cfg, batch, slots, 2, 2) / bandwidth
        run = functools.partial(_ours_tokens, ours, tokens, lengths)
        run(1), run(args.new_tokens)  # compile both lengths
        runs = [run]
        if hf is not None:
            runs.append(functools.partial(hf_generate, hf, tokens, lengths))
            runs[1](2)  # warm-up
        timings = time_decode_sides(runs, args.new_tokens)  # the sides take turns
        t = timings[0]
        row = {"size": size, "batch": batch, "ours_prefill_s": t.prefill_s,
               "ours_step_s": t.step_s, "ours_tokens_per_s": batch / t.step_s,
               "ours_roofline": roof_step / t.step_s,
               "ours_end_to_end_tokens_per_s": t.end_to_end_tokens_per_s()}
        if hf is not None:
            h = timings[1]
            row.update(hf_prefill_s=h.prefill_s, hf_step_s=h.step_s,
                       hf_tokens_per_s=batch / h.step_s, hf_roofline=roof_step / h.step_s,
                       hf_end_to_end_tokens_per_s=h.end_to_end_tokens_per_s(),
                       tokens_equal=float(np.mean(t.tokens == h.tokens)))
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0.5b,1.5b")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--remat", default=None, help="override the configs' remat policy")
    p.add_argument("--attention", default="auto", help="comma list of attention_impl to train")
    p.add_argument("--decode-sizes", default="0.5b,1.5b")
    p.add_argument("--decode-batches", default="1,8,64")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    sizes = parse_list("--sizes", args.sizes, SIZES) if args.sizes else []
    decode_sizes = parse_list("--decode-sizes", args.decode_sizes, SIZES) if args.decode_sizes \
        else []
    args.decode_batches = parse_list("--decode-batches", args.decode_batches, cast=int)
    attentions = parse_list("--attention", args.attention, CHOICES["model.attention_impl"])
    if args.remat and args.remat not in CHOICES["model.remat_policy"]:
        fail(f"--remat {args.remat!r}: expected one of {', '.join(CHOICES['model.remat_policy'])}")
    if args.rows < 1 or args.steps < 1:
        fail(f"--rows {args.rows} / --steps {args.steps}: expected integers >= 1")
    if args.new_tokens < 2:
        fail(f"--new-tokens {args.new_tokens}: expected >= 2 (the step time is T(n) - T(1))")

    device = jax.devices()[0]
    peak, peak_from = peak_flops_per_device()
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); "
          f"peak {peak / 1e12:.3g} TFLOP/s ({peak_from}); jax {jax.__version__}")
    result = {"device": device.device_kind, "platform": device.platform, "peak_flops": peak,
              "train": [], "decode": [], "maxtext_gpu": MAXTEXT_GPU}
    if sizes:
        print(f"\n== training, one device, fp32 params + AdamW, bf16 compute, {args.rows} rows "
              f"per step, median of {args.steps} steps")
        print(f"{'size':>5} {'remat':>24} {'attention':>21} {'compile s':>9} {'step s':>7} "
              f"{'tokens/s':>9} {'MFU':>6}  loss first -> last")
        for size, attention in itertools.product(sizes, attentions):
            r = bench_train(size, attention, args, peak)
            result["train"].append(r)
            print(f"{size:>5} {r['remat']:>24} {r['attention']:>21} {r['compile_s']:9.1f} "
                  f"{r['step_s']:7.3f} {r['tokens_per_s']:9.0f} {r['mfu']:6.1%}  "
                  f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}")
        m = MAXTEXT_GPU
        print(f"{'peer':>5} {m['system']}: {m['tflops_per_chip']:.0f} TFLOP/s per chip = "
              f"{m['tflops_per_chip'] / m['peak_tflops']:.1%} MFU (published)")
    if decode_sizes:
        use_hf = not args.skip_hf and _has_transformers()
        bw = measure_read_bandwidth(0.0625 if args.smoke else 4.0, "bfloat16")
        result["bandwidth"] = bw
        print(f"\n== greedy decode, bf16 weights, prompt {args.prompt_len} (left-padded), "
              f"{args.new_tokens} new tokens; measured bandwidth {bw / 1e9:.0f} GB/s")
        print("decode tok/s = batch / per-token step time (prefill apart); roofline = weights + "
              "KV cache bytes per step / bandwidth, over the step time")
        print(f"{'size':>5} {'batch':>5} {'prefill ms':>10} {'ours tok/s':>10} {'roofline':>8} "
              f"{'hf prefill':>10} {'hf tok/s':>9} {'roofline':>8} {'ours/hf':>7} "
              f"{'tokens equal':>12}")
        for size in decode_sizes:
            for r in bench_decode(size, args, bw, use_hf):
                result["decode"].append(r)
                hf = (f"{r['hf_prefill_s'] * 1e3:10.1f} {r['hf_tokens_per_s']:9.1f} "
                      f"{r['hf_roofline']:8.1%} "
                      f"{r['ours_tokens_per_s'] / r['hf_tokens_per_s']:6.2f}x "
                      f"{r['tokens_equal']:12.1%}" if "hf_tokens_per_s" in r
                      else f"{'-':>10} {'-':>9} {'-':>8} {'-':>7} {'-':>12}")
                print(f"{size:>5} {r['batch']:5d} {r['ours_prefill_s'] * 1e3:10.1f} "
                      f"{r['ours_tokens_per_s']:10.1f} {r['ours_roofline']:8.1%} {hf}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def _has_transformers() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
