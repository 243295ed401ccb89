"""Two builds of our CPU kernels in one process, their calls taking turns: which is faster.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_kernel_builds.py --a 855760d [--b DIR|REV]
        [--cases mm:8:384x1536+384x1536,attn:8:255:250] [--rounds 15] [--warm]

Why: this shared VM's read bandwidth moves between ~27 and ~60 GB/s within minutes, so a change
to a kernel timed as two fresh processes (the commit before, the commit after) often measures
the VM. Here both builds are loaded at once and every round times one jitted loop of each
(order reversed every other round); the median of the per-round ratios B / A and its quartiles
are printed, with each side's median and best time per call. < 1 means B is faster.

--a / --b: a git revision (its `marco_jax/model/cpu_kernels/` read with `git show`) or a folder
of kernel sources; --b defaults to this checkout's. Each is compiled as the package compiles its
own library (`native.compile_library`) and its handlers registered under suffixed FFI targets.

Cases (weights and caches cold: enough distinct copies to pass ~128 MB, more than the last-level
cache, cycled through in the loop, as a decode step reads each layer's once; at most 256 copies;
with --warm, two copies, as a small model's decode loop finds its KV cache and layers in cache):
  mm:ROWS:KxN[+KxN...]   one packed matmul call over these weights (a group: q/k/v, gate/up)
  attn:BATCH:SLOTS:LIVE[:KVxGxD]
                         a decode step's attention, the first LIVE of SLOTS slots written; by
                         default the layer-heavy model's heads (2 kv heads, groups of 3, head
                         dim 64: 2x3x64; the vocab-heavy model's are 2x2x32)
  attnw:BATCH:SLOTS:LIVE[:KVxGxD]
                         the same, by the kernel that first writes the step's key and value
                         (at slot LIVE - 1), the caches carried through the loop and donated,
                         as a decode loop carries its KV cache; skipped where a build has no
                         such kernel (before c565fca)
  greedy:ROWS:KxN        greedy token choice through an lm head [K, N]: the AMX-screened
                         kernel with this checkout's screen (`screen_head`) where a build has
                         it and this CPU has AMX, else the fused kernel that reads every tile
                         (so `--a` before the screen times one against the other)
The two builds' outputs are compared: the largest absolute difference is printed. A case must
call both builds' kernels as they were (grouped matmuls, for one, arrived in bd9dab6).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import times_in_turns  # noqa: E402

from marco_jax.config.cli import fail  # noqa: E402
from marco_jax.infer.sampling import tokens_from_parts  # noqa: E402
from marco_jax.model import native  # noqa: E402
from marco_jax.model.attention import MASK_VALUE  # noqa: E402
from marco_jax.model.packed_matmul import (  # noqa: E402
    TILE,
    greedy_screen_available,
    pack_kernel,
    screen_head,
)

REPO = Path(__file__).resolve().parent.parent
KERNELS = "marco_jax/model/cpu_kernels"
DEFAULT_CASES = ("mm:1:384x384+384x128+384x128,mm:1:384x1536+384x1536,mm:1:1536x384,"
                 "mm:8:384x384+384x128+384x128,mm:8:384x1536+384x1536,mm:8:1536x384,"
                 "mm:8:384x32000,mm:8:128x151936,attn:1:255:192,attn:8:255:192,attn:8:255:250,"
                 "attnw:8:255:250,greedy:1:128x151936,greedy:8:128x151936,greedy:8:896x151936")
COLD_BYTES = 128 * 2**20  # --warm: WARM_COPIES copies instead
WARM_COPIES = 2
MAX_COPIES = 256  # tiny cases stay partly cached rather than unroll thousands of calls
LOOPS = 20  # passes over the copies per timed call (WARM_LOOPS with --warm)
WARM_LOOPS = 200
WARM = False  # --warm


def sources(spec: str, into: Path) -> Path:
    """A folder of kernel sources: `spec` itself, or revision `spec`'s written into `into`."""
    if Path(spec).is_dir():
        if not list(Path(spec).glob("*.cc")):
            fail(f"{spec}: no .cc files; expected a folder of kernel sources or a git revision")
        return Path(spec)
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", spec,
                                 KERNELS + "/"], capture_output=True, text=True, check=False)
    except OSError as e:
        fail(f"{spec}: not a folder, and git could not be run to read a revision ({e})")
    names = listed.stdout.split()
    if listed.returncode != 0 or not any(n.endswith(".cc") for n in names):
        fail(f"{spec}: not a folder of kernel sources, nor a git revision with {KERNELS}/*.cc")
    into.mkdir(parents=True)
    for name in names:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{spec}:{name}"],
                              capture_output=True, check=True).stdout
        (into / Path(name).name).write_bytes(text)
    return into


def register(folder: Path, tag: str, out: Path) -> set[str]:
    """Compile `folder`'s kernels into `out` and register each handler as `<target>__<tag>`;
    the targets the build has."""
    try:
        native.compile_library(sorted(folder.glob("*.cc")), out)
    except RuntimeError as e:
        fail(f"{folder}: {e}")
    library = ctypes.CDLL(str(out))
    found = {target for target, handler in native.HANDLERS.items() if hasattr(library, handler)}
    for target in found:
        jax.ffi.register_ffi_target(f"{target}__{tag}",
                                    jax.ffi.pycapsule(getattr(library, native.HANDLERS[target])),
                                    platform="cpu")
    return found


def cold_copies(nbytes: int) -> int:
    """Distinct copies of a case's `nbytes` of weights or caches that pass COLD_BYTES (or
    WARM_COPIES with --warm)."""
    if WARM:
        return WARM_COPIES
    return min(MAX_COPIES, max(2, -(-COLD_BYTES // nbytes)))


def chained(call):
    """A jitted loop: LOOPS passes of `h = call(h, *copy)` over every copy, each call depending
    on the one before, as a decode step's layers do."""
    def loop(h, copies):
        def one(_, h):
            for copy in copies:
                h = call(h, *copy)
            return h
        return jax.lax.fori_loop(0, LOOPS, one, h)
    return jax.jit(loop)


def matmul_case(rows: int, shapes: list[tuple[int, int]], rng):
    copies = cold_copies(sum(4 * k * n for k, n in shapes))
    weights = [[pack_kernel(jnp.asarray(rng.standard_normal(s) * 0.02, jnp.float32))
                for s in shapes] for _ in range(copies)]
    x = jnp.asarray(rng.standard_normal((rows, shapes[0][0])), jnp.float32)

    def make(tag: str):
        def call(h, *group):
            out = [jax.ShapeDtypeStruct((rows, p.tiles.shape[0] * TILE), jnp.float32)
                   for p in group]
            ys = jax.ffi.ffi_call(f"marco_packed_matmul__{tag}", out)(h, *(p.tiles for p in group))
            return h + 1e-3 * sum(y[:, :1] for y in ys)  # a dependency, not a reduction
        return functools.partial(chained(call), x, weights)
    return make, LOOPS * copies


ATTENTION_HEADS = 2, 3, 64  # the layer-heavy model's kv heads, group size and head dim


def attention_operands(batch: int, slots: int, live: int, heads: tuple[int, int, int], rng):
    """A decode step's attention operands: copies (cold) of the caches k [B*K, D, S] and
    v [B*K, S, D] as NumPy arrays, q [B*K, G, D] and the first `live` slots valid [B, S];
    `heads` = (kv heads K, group size G, head dim D)."""
    kv, group, dim = heads
    copies = cold_copies(2 * batch * kv * dim * slots * 4)
    valid = jnp.asarray(np.arange(slots)[None].repeat(batch, 0) < live)
    q = jnp.asarray(rng.standard_normal((batch * kv, group, dim)), jnp.float32)
    caches = [(rng.standard_normal((batch * kv, dim, slots)).astype(np.float32),
               rng.standard_normal((batch * kv, slots, dim)).astype(np.float32))
              for _ in range(copies)]
    return q, valid, caches


def attention_case(batch: int, slots: int, live: int, heads: tuple[int, int, int], rng):
    q, valid, caches = attention_operands(batch, slots, live, heads, rng)
    caches = [(jnp.asarray(k), jnp.asarray(v)) for k, v in caches]
    dim = q.shape[-1]

    def make(tag: str):
        def call(h, k, v):
            out = jax.ffi.ffi_call(f"marco_decode_attention__{tag}",
                                   jax.ShapeDtypeStruct(h.shape, jnp.float32))(
                h, k, v, valid, scale=np.float32(dim ** -0.5),
                mask_value=np.float32(MASK_VALUE))
            return h + 1e-3 * out
        return functools.partial(chained(call), q, caches)
    return make, LOOPS * len(caches)


def writing_attention_case(batch: int, slots: int, live: int, heads: tuple[int, int, int],
                           rng):
    """`attention_case` by the kernel that writes the step's key and value into the cache first
    (slot live - 1, the newest valid one); each build's step carries its own copies of the
    caches from call to call (donated: updated in place, as in a decode loop)."""
    q, valid, caches = attention_operands(batch, slots, live, heads, rng)
    dim = q.shape[-1]
    k_new, v_new = (jnp.asarray(rng.standard_normal((q.shape[0], dim)), jnp.float32)
                    for _ in range(2))
    slot = jnp.int32(live - 1)

    def make(tag: str):
        def loop(h, caches):
            def one(_, carry):
                h, caches = carry
                written = []
                for k, v in caches:
                    out, k, v = jax.ffi.ffi_call(
                        f"marco_decode_attention_write__{tag}",
                        (jax.ShapeDtypeStruct(h.shape, jnp.float32),
                         jax.ShapeDtypeStruct(k.shape, k.dtype),
                         jax.ShapeDtypeStruct(v.shape, v.dtype)),
                        input_output_aliases={1: 1, 2: 2})(
                        h, k, v, k_new + 1e-3 * h[:, 0], v_new, slot, valid,
                        scale=np.float32(dim ** -0.5), mask_value=np.float32(MASK_VALUE))
                    h = h + 1e-3 * out
                    written.append((k, v))
                return h, written
            return jax.lax.fori_loop(0, LOOPS, one, (h, caches))

        run = jax.jit(loop, donate_argnums=1)
        own = [(jnp.asarray(k), jnp.asarray(v)) for k, v in caches]  # this build's copies

        def step():
            nonlocal own
            h, own = run(q, own)
            return h
        return step
    return make, LOOPS * len(caches)


def greedy_case(rows: int, k: int, n: int, rng, screens: dict[str, bool]):
    """Greedy token choice through a head [K, N] (cold copies), each call's tokens nudging the
    next call's input; `screens[tag]`: that build screens the head on AMX tiles."""
    copies = cold_copies(6 * k * n)  # float32 tiles and the bf16 screen
    heads = []
    for _ in range(copies):
        w = jnp.asarray(rng.standard_normal((k, n)) * 0.02, jnp.float32)
        heads.append(jax.jit(screen_head)(pack_kernel(w), w))
    x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
    slots = os.cpu_count() or 1
    outs = tuple(jax.ShapeDtypeStruct((rows, slots, TILE), d) for d in (jnp.float32, jnp.int32))

    def make(tag: str):
        def call(h, head):
            if screens[tag]:
                value, column = jax.ffi.ffi_call(f"marco_packed_argmax_screened__{tag}", outs)(
                    h, head.tiles, head.screen, head.screen_norms, columns=np.int64(n))
            else:
                value, column = jax.ffi.ffi_call(f"marco_packed_argmax__{tag}", outs)(
                    h, head.tiles, columns=np.int64(n))
            tokens = tokens_from_parts(value.reshape(rows, -1), column.reshape(rows, -1))
            return h + 1e-6 * tokens[:, None].astype(jnp.float32)
        return functools.partial(chained(call), x, [(head,) for head in heads])
    return make, LOOPS * copies


def parse_case(case: str) -> tuple:
    """("mm", rows, shapes), ("attn" / "attnw", batch, slots, live, heads) or ("greedy", rows,
    k, n), or one line and exit 2."""
    kind, *fields = case.split(":")
    try:
        if kind == "mm" and len(fields) == 2:
            shapes = [tuple(int(v) for v in s.split("x")) for s in fields[1].split("+")]
            if all(len(s) == 2 and min(s) > 0 for s in shapes) and len(
                    {k for k, _ in shapes}) == 1 and int(fields[0]) > 0:
                return "mm", int(fields[0]), shapes
        if kind == "greedy" and len(fields) == 2:
            rows, (k, n) = int(fields[0]), map(int, fields[1].split("x"))
            if rows > 0 and k > 0 and n > 0:
                return "greedy", rows, k, n
        if kind in ("attn", "attnw") and len(fields) in (3, 4):
            batch, slots, live = map(int, fields[:3])
            heads = (tuple(map(int, fields[3].split("x"))) if len(fields) == 4
                     else ATTENTION_HEADS)
            if (batch > 0 and 0 < live <= slots and len(heads) == 3 and min(heads) > 0
                    and heads[2] % 16 == 0):
                return kind, batch, slots, live, heads
    except ValueError:
        pass
    fail(f"--cases {case!r}: expected mm:ROWS:KxN[+KxN...] (one K), "
         "attn:BATCH:SLOTS:LIVE[:KVxGxD], attnw:BATCH:SLOTS:LIVE[:KVxGxD] (D a multiple of 16) "
         "or greedy:ROWS:KxN")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="git revision or folder of kernel sources")
    p.add_argument("--b", default=str(REPO / KERNELS))
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warm", action="store_true",
                   help=f"{WARM_COPIES} copies of each case's operands (cached, as a small "
                        "model's decode loop finds its KV cache) instead of > 128 MB of them")
    args = p.parse_args()
    global WARM, LOOPS
    if args.warm:
        WARM, LOOPS = True, WARM_LOOPS
    if args.rounds < 2:
        fail(f"--rounds {args.rounds}: expected >= 2")
    cases = [(case, parse_case(case)) for case in args.cases.split(",")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        targets = {tag: register(sources(spec, Path(tmp) / tag), tag, Path(tmp) / f"{tag}.so")
                   for tag, spec in (("a", args.a), ("b", args.b))}
        print(f"A = {args.a}, B = {args.b}; {args.rounds} rounds, the sides taking turns; "
              "us per call: median (best); B / A: median of the rounds [quartiles]")
        for case, (kind, *sizes) in cases:
            lacking = [tag.upper() for tag in "ab" if kind == "attnw"
                       and "marco_decode_attention_write" not in targets[tag]]
            if lacking:
                print(f"{case:32s} skipped: {' and '.join(lacking)} has no writing attention "
                      "kernel")
                continue
            if kind == "greedy":
                screens = {tag: "marco_packed_argmax_screened" in targets[tag]
                           and greedy_screen_available() for tag in "ab"}
                print(f"{case}: " + ", ".join(
                    f"{tag.upper()} {'screened on AMX' if on else 'reads every tile'}"
                    for tag, on in screens.items()))
                make, calls = greedy_case(*sizes, rng, screens)
            else:
                build = {"mm": matmul_case, "attn": attention_case,
                         "attnw": writing_attention_case}[kind]
                make, calls = build(*sizes, rng)
            steps = {tag: make(tag) for tag in "ab"}
            outs = {tag: np.asarray(step()) for tag, step in steps.items()}  # compiles
            times = times_in_turns(steps, args.rounds)
            a, b = (np.asarray(times[tag]) / calls * 1e6 for tag in "ab")  # us per call
            q1, mid, q3 = np.percentile(b / a, [25, 50, 75])
            print(f"{case:32s} A {np.median(a):8.1f} ({a.min():7.1f})  B {np.median(b):8.1f} "
                  f"({b.min():7.1f})  B / A {mid:.3f} [{q1:.3f}, {q3:.3f}]  max |B - A| "
                  f"{np.abs(outs['a'] - outs['b']).max():.1e}")


if __name__ == "__main__":
    main()
