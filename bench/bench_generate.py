"""Greedy KV-cache decoding: marco_jax vs transformers' `generate`, same weights, one run, and
both against the memory-bandwidth roofline of this machine.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_generate.py [--batches 1,8]
        [--shapes vocab-heavy,layer-heavy] [--prompt-len 128] [--new-tokens 128]
        [--ours float32,bfloat16,bfloat16/bfloat16] [--hf-dtypes float32,bfloat16] [--skip-hf]

Shapes as in `bench_train_vs_torch.py`: vocab-heavy = the `tiny-20m` preset (151,936-row
vocabulary, hidden 128, 4 layers), layer-heavy = vocab 32,000, hidden 384, 6 layers, 6/2 heads.
A random `transformers.Qwen2ForCausalLM` is saved and converted with our converter, so both sides
decode the same fp32 weights; prompts are left-padded (lengths between half and all of
--prompt-len), no stop token, and the generated tokens are compared (fp32 weights). Where an fp32
row differs, the tokens column names the first divergence and transformers' own top-2 logit gap
there: on 2026-12-06 the layer-heavy batch-8 run differed in one row from step 35 on (90.9%
equal), a near-tie of 4.8e-05 that our fresh-cache prefill (own keys only, `KVCache.fresh`)
rounds the other way; with the prefill over every cache slot it was identical.

Each side decodes 1 and --new-tokens tokens per row: "prefill ms" is the first run (prompt +
first token), "step ms" each further token ((T(n) - T(1)) / (n - 1)), "decode tok/s" = batch /
step, and "end-to-end tok/s" the full run's new tokens over its wall time. The sides of a batch
take turns (`common.time_decode_sides`: two rounds, order reversed in the second, an untimed
re-entry call at the start of each turn, best of the rounds): until 2026-12-06 each side was
timed alone, transformers first, and a prefill is short enough for a slow minute of this shared
VM to land on one side only (the layer-heavy batch-8 prefill, interleaved in one process, 10
rounds: ours 193 ms median vs transformers' 225, where that day's bench had printed 223 vs 183).

Roofline: a decode step must read every weight once (the embedding's rows for the fed tokens
only, unless it is tied to the lm head) and the filled part of the KV cache; that bounds the step
time at bytes per step / bandwidth; "% roofline" is that bound over the measured step time. The
prefill is compute-bound and is reported beside it, not folded in. Bandwidth: a jitted reduction
(best of 5) over a 1 GiB fp32 array (DRAM) and over an array of each row's own bytes per step,
read again and again as a decode loop reads its weights; the larger of the two is the row's
"roof GB/s". The second matters on hosts whose last-level cache holds much of these small models
(the 2-core VMs of 2026-12-06 report a 300 MiB L3, shared with other tenants): there the 1 GiB
figure alone put steps above 100% of the roofline (up to 170% in one run).

Rows marked "AMX screen" decoded greedily through a screened head (on CPUs with AMX tiles,
README "CPU kernels"): a bf16 copy of the head multiplied on AMX tiles, then the few 32-column
tiles still in contention computed exactly in float32. Their roofline counts the bytes such a step
reads (the bf16 screen and the exact tiles, counted during the run with `screen_stats`) instead
of the whole head; a line under the row gives it against the whole head's bytes too, the bound of
a decoder that reads its whole head, as transformers' does. Their "% w/ flops" is "-": the head's
products are then mostly bf16 tile products, not float32 FLOPs.

"% w/ flops" is the full roofline, max(bytes / bandwidth, FLOPs / peak), over the step time,
for float32-compute sides: FLOPs are 2 per weight per row plus attention over the filled slots,
the peak a 1024^3 float32 GEMM of XLA's (best of 5). On a 2-core AVX-512 VM that peak is about
200 GFLOP/s (2026-12-07), so a batch-8 step of the layer-heavy model (405 MFLOP, 2.0 ms) is
bound by compute as much as by reading its 114 MB (3.4 ms at 34 GB/s, 2.1 ms at 54): at batch 8
the memory roof alone is out of reach whenever the probe reads above ~45 GB/s. The issue's aim
(80% of the memory roof) is the "% roofline" column; both are printed.

Kernel ceiling: after each batch's rows, the lm head's matmul alone ([batch, hidden] x
[hidden, vocab], fp32, the largest single weight read of a step) timed in a jitted loop: XLA's
dot (what an unpacked decode runs), our packed-weights kernel (what our fp32 decode runs on CPU,
marco_jax/model/packed_matmul.py) and `torch.mm` (PyTorch's BLAS), beside the time to read its
weights at the measured bandwidth. At 8 rows XLA's and PyTorch's dots take about the read time
plus the arithmetic (2-core CPU, 2026-12-07: 2.5-3.0 ms vs 0.95 ms to read); the kernel streams
each weight once while it computes (1.2-1.8 ms). A second line times greedy token choice through
the head: the dot then `greedy_tokens` over the logits (XLA's dot, the kernel) beside the
kernel's fused greedy, which never writes the logits (what our fp32 greedy decode runs).

`--ours` lists our sides as param dtype[/matmul dtype][+xla]: `bfloat16` stores the weights in
bf16 (compute stays fp32; decoding reads them packed in bf16, widened in registers),
`bfloat16/bfloat16` also runs the matmuls on bf16 operands with fp32 accumulation
(`model.matmul_dtype`, AMX on Sapphire Rapids and later CPUs), and `+xla` runs that side with
XLA's ops instead of our CPU kernels (packed matmuls, the fused greedy head, the decode
attention: MARCO_CPU_KERNELS=0 during its calls; a model of its own, so the kept layouts of the
two sides never replace each other).
`--hf-dtypes bfloat16` adds transformers with bf16 weights (`torch_dtype=bfloat16`), the peer of
those. Tokens of bf16 sides are compared with transformers' fp32 tokens as a fraction equal
(these random models have near-tied logits, so bf16 rounding changes most of them, on both sides).
2026-12-06 22:25, AMX VM, one run (after the bf16 gather and one-row fixes, README "bf16 matmuls
on CPU"): bf16 weights and matmuls, steps 2.38 / 4.16 ms (vocab-heavy batch 1 / 8) and 3.66 /
5.80 ms (layer-heavy) vs fp32 2.37 / 5.76 and 4.31 / 7.84 and transformers bf16 6.44 / 9.71 and
8.19 / 10.37 ms.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_vs_torch import SHAPES  # noqa: E402
from common import (  # noqa: E402
    DecodeTiming,
    best_of,
    decode_bytes_per_step,
    decode_flops_per_step,
    hf_generate,
    host_malloc_line,
    left_padded_prompts,
    measure_matmul_flops,
    measure_read_bandwidth,
    parse_list,
    peaked_hf_model,
    reexec_like_the_clis,
    time_decode_sides,
)

from marco_jax.checkpoint import load_model  # noqa: E402
from marco_jax.config.cli import fail  # noqa: E402
from marco_jax.convert.hf_to_ours import convert_hf_to_orbax  # noqa: E402
from marco_jax.infer import generate  # noqa: E402
from marco_jax.infer.sampling import greedy_tokens, packed_greedy_tokens  # noqa: E402
from marco_jax.model.config import get_preset  # noqa: E402
from marco_jax.model.packed_matmul import (  # noqa: E402
    greedy_screen_available,
    pack_kernel,
    packed_matmul,
    screen_head,
    screen_stats,
)


def build(tmp: Path, name: str):
    import torch

    preset, overrides = SHAPES[name]
    cfg = get_preset(preset, dtype="float32", param_dtype="float32", **overrides)
    hf = peaked_hf_model(cfg, torch.float32)
    hf.save_pretrained(tmp / name / "hf", safe_serialization=True)
    convert_hf_to_orbax(tmp / name / "hf", tmp / name / "ours", dtype="float32")
    return cfg, hf


class Side(NamedTuple):
    """One decoding side of a batch's rows: transformers in a dtype, or ours in a setting."""
    label: str
    run: Callable[[int], np.ndarray]  # n new tokens per row -> tokens [batch, n]
    step_bytes: float  # what a decode step must read (the roofline)
    step_flops: float | None  # its float32 FLOPs (the compute roof); None: not float32 compute
    is_hf: bool
    fp32_ours: bool  # ours in fp32 throughout: where a token divergence gets explained


def ours_generate(model, tokens: np.ndarray, lengths: np.ndarray, new_tokens: int,
                  xla_dots: bool = False) -> np.ndarray:
    """Our greedy tokens; `xla_dots`: with our CPU kernels switched off for the call."""
    with mock.patch.dict(os.environ, {"MARCO_CPU_KERNELS": "0"} if xla_dots else {}):
        return np.asarray(generate(model, tokens, new_tokens, prompt_lengths=lengths,
                                   eos_ids=()).tokens)


class Roofline:
    """Seconds per decode step at the better of the DRAM bandwidth and the bandwidth measured
    at the step's own working-set size (module doc), the latter measured once per size; and at
    the measured float32 compute peak."""

    def __init__(self, dram_bandwidth: float, peak_flops: float):
        self.dram = dram_bandwidth
        self.peak_flops = peak_flops
        self.at_size: dict[int, float] = {}

    def bandwidth(self, nbytes: float) -> float:
        mib = max(1, round(nbytes / 2**20))
        if mib not in self.at_size:
            self.at_size[mib] = measure_read_bandwidth(mib / 1024)
        return max(self.dram, self.at_size[mib])


def show_row(batch: int, side: Side, t: DecodeTiming, roof: Roofline, vs: str,
             same: str) -> None:
    bw = roof.bandwidth(side.step_bytes)
    memory_s = side.step_bytes / bw
    both = "-" if side.step_flops is None else (
        f"{max(memory_s, side.step_flops / roof.peak_flops) / t.step_s:.1%}")
    print(f"{batch:5d} {side.label:32s} {t.prefill_s * 1e3:10.1f} {t.step_s * 1e3:8.2f} "
          f"{batch / t.step_s:12.1f} {memory_s / t.step_s:10.1%} {bw / 1e9:8.1f} {both:>9} "
          f"{vs:>6} {t.end_to_end_tokens_per_s():16.1f}  {same}")


def first_divergence(hf, tokens: np.ndarray, lengths: np.ndarray, ref: np.ndarray,
                     got: np.ndarray) -> str:
    """Where `got` first leaves transformers' tokens `ref`, and transformers' own top-2 logit gap
    there (one fp32 forward over that row's prompt + reference prefix, no cache): a gap near fp32
    rounding means a near-tie that either side may break, not a decoding error."""
    import torch

    rows, steps = np.nonzero(got != ref)
    row = int(rows[0])
    step = int(steps[rows == row][0])
    prompt = tokens[row, tokens.shape[1] - lengths[row]:]
    ids = torch.from_numpy(np.concatenate([prompt, ref[row, :step]])[None].astype(np.int64))
    with torch.no_grad():
        logits = hf(ids.to(next(hf.parameters()).device)).logits[0, -1].double().cpu().numpy()
    top2 = np.sort(logits)[-2:]
    return f"(first at row {row} step {step}: transformers' top-2 gap {top2[1] - top2[0]:.2g})"


class HeadTimes(NamedTuple):
    """Seconds per lm-head call at one batch (`head_ceiling`)."""
    xla: float  # XLA's dot
    packed: float  # the packed kernel
    torch: float  # torch.mm
    xla_greedy: float  # XLA's dot, then greedy_tokens over the logits
    packed_greedy: float  # the packed kernel, then greedy_tokens over the logits
    fused_greedy: float  # the kernel's fused greedy (no logits)
    screened_greedy: float | None  # the same, screened on AMX tiles (None: no AMX)
    exact_tiles: float  # per screened call: 32-column tiles computed exactly


def head_ceiling(cfg, batch: int, repeats: int = 32) -> HeadTimes:
    """Seconds per [batch, hidden] x [hidden, vocab] fp32 matmul, and per greedy token choice
    through it, each in a jitted loop whose steps depend on each other, as in decoding;
    torch.mm into a preallocated output; best of 3."""
    import torch

    rng = np.random.default_rng(0)
    w = rng.standard_normal((cfg.hidden_size, cfg.vocab_size), np.float32)
    x = rng.standard_normal((batch, cfg.hidden_size), np.float32)

    def chain(step):
        @jax.jit
        def loop(x, w):
            def body(_, carry):
                x, acc = carry
                y = step(x, w).reshape(batch, -1).astype(jnp.float32)
                return x + 1e-6 * y[:, :1], acc + y[:, 0].sum()
            return jax.lax.fori_loop(0, repeats, body, (x, jnp.float32(0)))[1]
        return loop

    xj, wj = jnp.asarray(x), jnp.asarray(w)
    packed = pack_kernel(wj)
    sides = [(jnp.matmul, wj), (packed_matmul, packed),
             (lambda x, w: greedy_tokens(jnp.matmul(x, w)), wj),
             (lambda x, w: greedy_tokens(packed_matmul(x, w)), packed),
             (packed_greedy_tokens, packed)]
    screens = greedy_screen_available()
    if screens:
        sides.append((packed_greedy_tokens, jax.jit(screen_head)(packed, wj)))
    before = screen_stats()
    seconds = []
    for step, weight in sides:
        loop = chain(step)
        loop(xj, weight).block_until_ready()
        seconds.append(best_of(lambda f=loop, w=weight: f(xj, w).block_until_ready(),
                               repeats=3)[1] / repeats)
    xt, wt, out = torch.from_numpy(x), torch.from_numpy(w), torch.empty(batch, cfg.vocab_size)

    def torch_loop():
        for _ in range(repeats):
            torch.mm(xt, wt, out=out)

    calls = screen_stats()
    screened = max(1, calls["screened"] - before["screened"])
    torch_loop()
    torch_s = best_of(torch_loop, repeats=3)[1] / repeats
    return HeadTimes(seconds[0], seconds[1], torch_s, *seconds[2:5],
                     seconds[5] if screens else None,
                     (calls["exact_tiles"] - before["exact_tiles"]) / screened)


def screened_head_bytes(cfg, weight_bytes: int, before: dict[str, int], after: dict[str, int],
                        steps: int) -> tuple[float, float, int] | None:
    """For a run whose greedy calls screened the head (`screen_stats` before and after it, one
    call per token; the head's tiles `weight_bytes` a weight): (the step's bytes less those of
    reading every tile of the head, exact tiles per call, calls that read every tile); None if
    none screened."""
    calls = after["screened"] - before["screened"]
    if calls == 0:
        return None
    exact = (after["exact_tiles"] - before["exact_tiles"]) / calls
    fell_back = after["read_every_tile"] - before["read_every_tile"]
    head = cfg.hidden_size * cfg.vocab_size
    screened = calls / steps  # the calls that read every tile read the whole head
    change = screened * (head * 2 + exact * cfg.hidden_size * 32 * weight_bytes
                         - head * weight_bytes)
    return change, exact, fell_back


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--ours", default="float32,float32+xla,bfloat16,bfloat16/bfloat16",
                   help="our sides: param dtype[/matmul dtype][+xla], compute is fp32")
    p.add_argument("--hf-dtypes", default="float32,bfloat16",
                   help="transformers weight dtypes (the first one is the token reference)")
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    shapes = parse_list("--shapes", args.shapes, tuple(SHAPES))
    batches = parse_list("--batches", args.batches, cast=int)
    dtypes = ("float32", "bfloat16")
    hf_dtypes = parse_list("--hf-dtypes", args.hf_dtypes, dtypes)
    ours = [(*(v.split("/") if "/" in v else (v, "")), xla) for v, xla in (
        (v.removesuffix("+xla"), v.endswith("+xla")) for v in args.ours.split(",") if v)]
    bad = [v for v in ours if len(v) != 3 or v[0] not in dtypes or v[1] not in ("", *dtypes)]
    if bad or not ours:
        fail(f"--ours {args.ours}: expected a comma list of PARAM[/MATMUL][+xla] dtypes of "
             f"{', '.join(dtypes)}")
    if args.new_tokens < 2:
        fail(f"--new-tokens {args.new_tokens}: expected >= 2 (the step time is T(n) - T(1))")
    print(host_malloc_line())
    bw, peak = measure_read_bandwidth(), measure_matmul_flops()
    roof = Roofline(bw, peak)
    print(f"{os.cpu_count()} CPU cores; measured read bandwidth {bw / 1e9:.1f} GB/s (1 GiB), "
          f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s; prompt {args.prompt_len} (left-padded "
          f"rows), {args.new_tokens} new tokens, greedy")
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    import torch

    for name in shapes:
        cfg, hf = build(tmp, name)
        hf_models = {"float32": hf}
        print(f"\n== {name}: {cfg.num_params() / 1e6:.1f}M params, vocab {cfg.vocab_size}, "
              f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, tied "
              f"{cfg.tie_word_embeddings}")
        print(f"{'batch':>5} {'side':32s} {'prefill ms':>10} {'step ms':>8} {'decode tok/s':>12} "
              f"{'% roofline':>10} {'roof GB/s':>8} {'% w/ flops':>9} {'vs hf':>6} "
              f"{'end-to-end tok/s':>16}  tokens")
        for batch in batches:
            tokens, lengths = left_padded_prompts(cfg.vocab_size, batch, args.prompt_len)
            # the filled KV slots, mean over the decode steps (empty ones need no read)
            slots = args.prompt_len + args.new_tokens // 2
            flops = decode_flops_per_step(cfg, batch, slots)
            sides: list[Side] = []
            for hf_dtype in ([] if args.skip_hf else hf_dtypes):
                if hf_dtype not in hf_models:  # the same weights, rounded for bf16
                    hf_models[hf_dtype] = copy.deepcopy(hf).to(getattr(torch, hf_dtype))
                run_hf = functools.partial(hf_generate, hf_models[hf_dtype], tokens, lengths)
                run_hf(2)  # warm-up
                size = jnp.dtype(hf_dtype).itemsize
                sides.append(Side(f"transformers generate {hf_dtype}", run_hf,
                                  decode_bytes_per_step(cfg, batch, slots, size, size),
                                  flops if hf_dtype == "float32" else None,
                                  is_hf=True, fp32_ours=False))
            screens = {}  # label -> (whole-head bytes, screened_head_bytes(...))
            for param_dtype, matmul_dtype, xla_dots in ours:
                model = load_model(tmp / name / "ours", dtype="float32", param_dtype=param_dtype,
                                   matmul_dtype=matmul_dtype)
                run = functools.partial(ours_generate, model, tokens, lengths, xla_dots=xla_dots)
                run(1)
                before = screen_stats()
                run(args.new_tokens)  # compiles this length; counts the screen's work
                label = (f"marco_jax {param_dtype}" + (f"/{matmul_dtype} mm" if matmul_dtype
                                                       else "") + (" XLA ops" if xla_dots else ""))
                weight_bytes = jnp.dtype(param_dtype).itemsize
                step_bytes = decode_bytes_per_step(cfg, batch, slots, weight_bytes, 4)
                screen = screened_head_bytes(cfg, weight_bytes, before, screen_stats(),
                                             args.new_tokens)
                step_flops = None if matmul_dtype else flops
                if screen is not None and not xla_dots:
                    label += " AMX screen"
                    screens[label] = (step_bytes, *screen)
                    step_bytes += screen[0]
                    step_flops = None  # the head's products are mostly bf16 tile products
                sides.append(Side(label, run, step_bytes, step_flops, is_hf=False,
                                  fp32_ours=(param_dtype, matmul_dtype) == ("float32", "")))
            timings = time_decode_sides([side.run for side in sides], args.new_tokens)
            # transformers' first dtype is the token reference and the step ours are set against.
            ref = hf_step = None
            for side, t in zip(sides, timings, strict=True):
                vs = "" if side.is_hf or hf_step is None else f"{hf_step / t.step_s:5.2f}x"
                if ref is None and side.is_hf:
                    ref, hf_step, same = t.tokens, t.step_s, "reference"
                elif ref is None:
                    same = "-"
                elif np.array_equal(t.tokens, ref):
                    same = "identical"
                else:
                    same = f"{np.mean(t.tokens == ref):.1%} equal"
                    if side.fp32_ours and hf_dtypes[0] == "float32":
                        same += " " + first_divergence(hf, tokens, lengths, ref, t.tokens)
                show_row(batch, side, t, roof, vs, same)
                if side.label in screens:
                    full_bytes, change, exact, fell_back = screens[side.label]
                    full_s = full_bytes / roof.bandwidth(full_bytes)
                    print(f"      {side.label}: the step reads the head's bf16 screen and "
                          f"{exact:.1f} exact tiles a call ({change / 1e6:+.1f} MB against "
                          f"reading every tile; {fell_back} calls read every tile); against the "
                          f"bytes of reading every tile of the head the row is at "
                          f"{full_s / t.step_s:.1%} of the roofline")
            head = head_ceiling(cfg, batch)
            head_bytes = cfg.hidden_size * cfg.vocab_size * 4
            print(f"      kernel ceiling: lm-head matmul [{batch},{cfg.hidden_size}]x"
                  f"[{cfg.hidden_size},{cfg.vocab_size}] fp32 alone: XLA {head.xla * 1e3:.2f} ms, "
                  f"packed kernel {head.packed * 1e3:.2f} ms, PyTorch {head.torch * 1e3:.2f} ms; "
                  f"reading its weights at the roof bandwidth "
                  f"{head_bytes / roof.bandwidth(head_bytes) * 1e3:.2f} ms")
            screened = ("no AMX" if head.screened_greedy is None else
                        f"{head.screened_greedy * 1e3:.2f} ms ({head.exact_tiles:.1f} exact tiles "
                        "a call)")
            print(f"      greedy through the head: XLA dot + argmax {head.xla_greedy * 1e3:.2f} "
                  f"ms, packed kernel + argmax {head.packed_greedy * 1e3:.2f} ms, fused in the "
                  f"kernel {head.fused_greedy * 1e3:.2f} ms, screened on AMX {screened}")


if __name__ == "__main__":
    reexec_like_the_clis()
    main()
