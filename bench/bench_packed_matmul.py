"""The CPU matmul kernel on packed weights vs XLA:CPU's dot, one run, both sides per shape.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_packed_matmul.py [--rows 1,8,64,1024]
        [--weights float32,bfloat16] [--rounds 15]

Shapes: the Linear and lm-head weights of the benches' two models (layer-heavy: hidden 384,
intermediate 1,536, vocab 32,000; vocab-heavy `tiny-20m`: hidden 128, vocab 151,936) and of
Qwen2-0.5B (hidden 896, intermediate 4,864), [K, N] in each --weights dtype, times [rows, K]
fp32. The XLA side is `x @ w` jitted on the row-major weight (what training and an unpacked decode
run; bf16 weights are converted to float32 first, as our fp32-matmul model does and XLA:CPU
needs); ours is `packed_matmul` on the weight packed once ([N / 32, K, 32], bf16 widened in
registers). Each call is jitted alone, the sides take turns within every round (order reversed
every other round), and the median and best of the rounds are printed with the weight's read
rate and GFLOP/s; "ours / XLA" > 1 means ours is faster. A 1 GiB jitted reduction gives the DRAM
read bandwidth beside them. The bf16 XLA side converts the whole weight in every call; inside a
decode loop XLA hoists that convert out of the loop (one float32 copy per `generate` call, read
by every step), so for decode steps its float32 rows are the fairer comparison.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import measure_read_bandwidth, parse_list, times_in_turns  # noqa: E402

from marco_jax.config.cli import fail  # noqa: E402
from marco_jax.model.native import kernels_available  # noqa: E402
from marco_jax.model.packed_matmul import (  # noqa: E402
    pack_kernel,
    packed_matmul,
)

SHAPES = {  # name: (K, N)
    "layer-heavy q/o 384x384": (384, 384),
    "layer-heavy k/v 384x128": (384, 128),
    "layer-heavy gate/up 384x1536": (384, 1536),
    "layer-heavy down 1536x384": (1536, 384),
    "layer-heavy head 384x32000": (384, 32000),
    "vocab-heavy head 128x151936": (128, 151936),
    "qwen2-0.5b gate/up 896x4864": (896, 4864),
    "qwen2-0.5b down 4864x896": (4864, 896),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,8,64,1024")
    p.add_argument("--weights", default="float32")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    rows_list = parse_list("--rows", args.rows, cast=int)
    weight_dtypes = parse_list("--weights", args.weights, ("float32", "bfloat16"))
    if args.rounds < 1:
        fail(f"--rounds {args.rounds}: expected >= 1")
    if not kernels_available():
        fail("the CPU matmul kernel is not available here (see the warning above)")
    print(f"{os.cpu_count()} CPU cores; read bandwidth {measure_read_bandwidth() / 1e9:.1f} GB/s"
          f" (1 GiB); medians (best) of {args.rounds} rounds, sides taking turns")
    print(f"{'shape':30s} {'weights':8s} {'rows':>5} {'XLA ms':>16} {'packed ms':>16} "
          f"{'ours / XLA':>10} {'XLA GB/s':>8} {'ours GB/s':>9} {'XLA GF/s':>8} {'ours GF/s':>9}")
    rng = np.random.default_rng(0)
    for name, (k, n) in SHAPES.items():
        for dtype in weight_dtypes:
            w = jnp.asarray(rng.standard_normal((k, n), np.float32), dtype)
            packed = jax.jit(pack_kernel, static_argnums=(1, 2))(w, 1, dtype)
            for rows in rows_list:
                x = jnp.asarray(rng.standard_normal((rows, k), np.float32))
                compare(f"{name:30s} {dtype:8s} {rows:5d}", x, w, packed, args.rounds)


_xla = jax.jit(lambda x, w: x @ w.astype(jnp.float32))
_ours = jax.jit(packed_matmul)


def compare(label: str, x: jax.Array, w: jax.Array, packed, rounds: int) -> None:
    """Both sides on one shape: checked equal, then timed in turns; one printed line."""
    ref, got = _xla(x, w), _ours(x, packed)
    err, scale = float(jnp.max(jnp.abs(ref - got))), float(jnp.max(jnp.abs(ref)))
    if err > 1e-4 * scale:
        fail(f"{label.split()[0]}: the sides differ by {err:.3g} (max |y| {scale:.3g})")
    times = times_in_turns({"xla": lambda: _xla(x, w), "ours": lambda: _ours(x, packed)},
                           rounds)
    med = {s: float(np.median(v)) for s, v in times.items()}
    best = {s: min(v) for s, v in times.items()}
    (rows, k), n = x.shape, w.shape[1]
    flops, nbytes = 2 * rows * k * n, w.dtype.itemsize * k * n
    print(f"{label} {med['xla'] * 1e3:7.3f} ({best['xla'] * 1e3:6.3f}) "
          f"{med['ours'] * 1e3:7.3f} ({best['ours'] * 1e3:6.3f}) "
          f"{med['xla'] / med['ours']:9.2f}x "
          f"{nbytes / med['xla'] / 1e9:8.1f} {nbytes / med['ours'] / 1e9:9.1f} "
          f"{flops / med['xla'] / 1e9:8.1f} {flops / med['ours'] / 1e9:9.1f}")

if __name__ == "__main__":
    main()
