"""CPU inference matmuls on packed weights: an XLA FFI kernel built at first use.

Decoding multiplies a few rows by every weight of the model. XLA:CPU's dot at 8 rows takes about
the time to read the weight plus the time of the arithmetic (measured on a 2-core CPU,
[8, 384] x [384, 32000] fp32: 2.5-3.0 ms, against 0.95 ms to read the weight with a jitted sum),
which held batch-8 decode steps at 36-45% of the memory-bandwidth roofline. The kernel in
`cpu_kernels/packed_matmul.cc` reads weights packed as column tiles, `[N / 32, K, 32]`, each one
contiguous block streamed once while its products accumulate in registers, and shares the tiles
out over XLA's intra-op thread pool (same shape: 1.2-1.8 ms; `bench/bench_packed_matmul.py`
prints both sides on the layer and head shapes, 1 to 1,024 rows).

Where it runs: inference on CPU with float32 matmuls, over the decode weights that `generate` and
the eval engine build once per params (`Qwen2ForCausalLM.layer_arrays(pack=True)`,
`decode_head`), for prefill and decode alike; greedy decoding reduces the head's products
to the next tokens inside the kernel (`packed_argmax_parts`); on CPUs with AMX tiles that pass
screens a bf16 copy of the head first and computes exactly only the columns the screen cannot
rule out (`screen_head`: the same tokens, half the head's bytes and a fraction of its
arithmetic). Training keeps XLA's dots (the
kernel has no gradient). bf16 matmuls keep XLA's dots too (AMX tiles on CPUs that have them);
bf16 weights under float32 matmuls are packed as stored, in bf16, and widened to float32 in
registers (half the bytes of a float32 copy; XLA:CPU converts them to float32 copies in every
call instead).

Built at first use with the host's C++ compiler (`marco_jax.model.native`); without one, or with
MARCO_CPU_KERNELS=0, the matmuls stay XLA's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.native import kernels_available, library, load_error
from marco_jax.model.target import target_platform

TILE = 32  # output columns per packed tile (kTile in the kernel)
_TARGET = "marco_packed_matmul"
_ARGMAX_TARGET = "marco_packed_argmax"
# tiles dtype -> FFI target (and the library's handler symbol)
_TARGETS = {jnp.dtype(jnp.float32): _TARGET, jnp.dtype(jnp.bfloat16): _TARGET + "_bf16"}
_ARGMAX_TARGETS = {jnp.dtype(jnp.float32): _ARGMAX_TARGET,
                   jnp.dtype(jnp.bfloat16): _ARGMAX_TARGET + "_bf16"}
_SCREENED_TARGETS = {jnp.dtype(jnp.float32): "marco_packed_argmax_screened",
                     jnp.dtype(jnp.bfloat16): "marco_packed_argmax_screened_bf16"}
SCREEN_ROWS = 16  # rows the screened greedy kernel takes (kScreenRows); more read every tile
_MAX_WORKERS = 64  # threads greedy decoding's kernel shares the head's tiles among, at most
_F32 = jnp.dtype(jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedKernel:
    """A Linear kernel [k1..kc, n...] packed for `packed_matmul`: tiles [ceil(N / 32), K, 32] in
    float32 or bfloat16, K = k1*..*kc, N = prod(n...) (zero columns pad the last tile);
    `out_shape` is (n...). An lm head may carry greedy decoding's screen (`screen_head`): a bf16
    copy [ceil(N / 64), ceil(K / 32), 4, 16, 16, 2] and the largest column norms [3] of that copy,
    of its rounding residual and of the float32 head, which bound the screen's error."""
    tiles: jax.Array
    out_shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    screen: jax.Array | None = None
    screen_norms: jax.Array | None = None

    @property
    def in_features(self) -> int:
        return self.tiles.shape[1]

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)


def pack_kernel(kernel: jax.Array, contract_dims: int = 1,
                dtype: jnp.dtype = jnp.float32) -> PackedKernel:
    """kernel [k1..kc, n...] (the first `contract_dims` axes contracted) -> `PackedKernel` in
    `dtype` (float32, or bfloat16 for weights stored so: half the bytes, the same products). A
    copy: build it once, outside loops (jit it)."""
    if jnp.dtype(dtype) not in _TARGETS:
        raise ValueError(f"pack_kernel: dtype {jnp.dtype(dtype).name}; expected float32 or "
                         "bfloat16")
    k = math.prod(kernel.shape[:contract_dims])
    out_shape = tuple(kernel.shape[contract_dims:])
    n = math.prod(out_shape)
    padded = -(-n // TILE) * TILE
    w = kernel.reshape(k, n).astype(dtype)
    if padded != n:
        w = jnp.pad(w, ((0, 0), (0, padded - n)))
    tiles = w.reshape(k, padded // TILE, TILE).transpose(1, 0, 2)
    return PackedKernel(tiles=tiles, out_shape=out_shape)


def screen_head(packed: PackedKernel, kernel: jax.Array) -> PackedKernel:
    """`packed` (the tiles of `kernel` [K, N], float32 or bf16) with greedy decoding's screen:
    `kernel` in bf16 (nearest even; bf16 weights as they are), zero-padded to
    [ceil(K / 32) * 32, ceil(N / 64) * 64], in the layout AMX tile products read
    (cpu_kernels/amx_screen.h), and the largest column L2 norms of that copy, of its rounding
    residual and of `kernel`, which bound the screen's error (packed_matmul.cc,
    PackedArgmaxScreened). Half a float32 head's bytes again (a bf16 head's: as many); build it
    where `greedy_screen_available()`."""
    k, n = kernel.shape
    if packed.out_shape != (n,) or packed.in_features != k:
        raise ValueError(f"screen_head: tiles of [{packed.in_features}, {packed.out_shape}] for "
                         f"a kernel {kernel.shape}; expected the tiles of that kernel")
    chunks, groups = -(-k // 32), -(-n // 64)
    w = kernel.astype(jnp.float32)
    padded = jnp.pad(w, ((0, chunks * 32 - k), (0, groups * 64 - n)))
    screen = (padded.reshape(chunks, 16, 2, groups, 4, 16).transpose(3, 0, 4, 1, 5, 2)
              .astype(jnp.bfloat16))
    rounded = w.astype(jnp.bfloat16).astype(jnp.float32)
    norms = jnp.stack([jnp.sqrt(jnp.max(jnp.sum(jnp.square(v), axis=0)))
                       for v in (rounded, rounded - w, w)])
    return dataclasses.replace(packed, screen=screen, screen_norms=norms)


def greedy_screen_available() -> bool:
    """Whether greedy decoding can screen the head on AMX tiles in this process (the kernels
    built for a CPU with AMX, and the OS granting tile state); without, it reads every tile."""
    lib = library() if kernels_available() else None
    return lib is not None and lib.MarcoAmxScreenReady() == 1


def screen_stats() -> dict[str, int]:
    """This process's screened greedy calls so far: `screened`, `read_every_tile` (calls that
    fell back: no AMX, more than 16 rows, non-finite or huge values, too many close columns) and
    `exact_tiles` (32-column tiles computed exactly after a screen)."""
    lib = library()
    if lib is None:
        return {"screened": 0, "read_every_tile": 0, "exact_tiles": 0}
    out = (ctypes.c_int64 * 3)()
    lib.MarcoScreenStats(out)
    return {"screened": out[0], "read_every_tile": out[1], "exact_tiles": out[2]}


def unpack_kernel(packed: PackedKernel) -> jax.Array:
    """The kernel [K, n...] a `PackedKernel` was packed from (contract axes flattened), in the
    packed dtype."""
    t, k, _ = packed.tiles.shape
    w = packed.tiles.transpose(1, 0, 2).reshape(k, t * TILE)[:, : packed.out_features]
    return w.reshape(k, *packed.out_shape)


MAX_GROUP = 8  # kernels one `packed_matmul_group` call takes (kMaxParts in the kernel)


def packed_matmul(x: jax.Array, packed: PackedKernel) -> jax.Array:
    """x [..., K] @ the packed kernel -> [..., n...] float32 (x in float32, bf16 weights widened
    to float32; products summed in float32, tile by tile: the sums of a float32 dot up to the
    order of addition). CPU only; no gradient. Needs `kernels_available()`."""
    return packed_matmul_group(x, [packed])[0]


def packed_matmul_group(x: jax.Array, kernels: Sequence[PackedKernel]) -> list[jax.Array]:
    """`[packed_matmul(x, k) for k in kernels]` in one kernel call (up to 8 kernels of one dtype
    and input size): their tiles are shared out over the threads in one pass, so a layer's q, k
    and v projections (or gate and up) hand work to the pool once, not three times (2-core CPU,
    the layer-heavy layers at 1 and 8 rows: 10-34% less time than one call each)."""
    error = load_error()
    if error is not None:
        raise RuntimeError(f"{_TARGET}: the CPU kernel is not available ({error})")
    if not 1 <= len(kernels) <= MAX_GROUP:
        raise ValueError(f"packed_matmul_group: {len(kernels)} kernels; expected 1..{MAX_GROUP}")
    k = kernels[0].in_features
    dtype = jnp.dtype(kernels[0].tiles.dtype)
    if dtype not in _TARGETS:
        raise ValueError(f"packed_matmul: tiles of {dtype}; expected float32 or bfloat16")
    for packed in kernels:
        if packed.in_features != k or jnp.dtype(packed.tiles.dtype) != dtype:
            raise ValueError(f"packed_matmul_group: kernels of {packed.in_features} features in "
                             f"{packed.tiles.dtype} beside {k} in {dtype}; expected one of each")
    if x.shape[-1] != k:
        raise ValueError(f"packed_matmul: x has {x.shape[-1]} features, the kernel {k}")
    lead = x.shape[:-1]
    rows = x.reshape(-1, k).astype(jnp.float32)
    shapes = [jax.ShapeDtypeStruct((rows.shape[0], p.tiles.shape[0] * TILE), jnp.float32)
              for p in kernels]
    ys = jax.ffi.ffi_call(_TARGETS[dtype], shapes)(rows, *(p.tiles for p in kernels))
    return [y[:, : p.out_features].reshape(*lead, *p.out_shape)
            for y, p in zip(ys, kernels, strict=True)]


def packed_argmax_parts(x: jax.Array, packed: PackedKernel, columns: int | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding's heavy half, without writing the logits: x [M, K] @ the packed kernel
    (one output axis) over its first `columns` columns (default all; the others are never
    read), reduced while the products are in registers to candidates (value [M, C] float32,
    column [M, C] int32): the kernel's workers each keep, per 32-column lane, the largest
    product they met and its first column (NaN above every number). Row r's argmax with
    jnp.argmax's ties and NaNs is the smallest candidate column holding its largest value, or
    its first NaN (`infer.sampling.packed_greedy_tokens`). A head with a screen (`screen_head`)
    and at most 16 rows runs the screened kernel: the same answer, fewer candidates (the
    columns it computed exactly). CPU only; needs `kernels_available()`."""
    error = load_error()
    if error is not None:
        raise RuntimeError(f"{_ARGMAX_TARGET}: the CPU kernel is not available ({error})")
    n = packed.out_features
    columns = n if columns is None else int(columns)
    if len(packed.out_shape) != 1 or x.ndim != 2 or x.shape[1] != packed.in_features:
        raise ValueError(f"packed_argmax_parts: x {x.shape} @ a kernel [{packed.in_features}, "
                         f"{n}]; expected x [M, K] and one output axis")
    if not 0 < columns <= n:
        raise ValueError(f"packed_argmax_parts: columns={columns}; expected 1..{n}")
    slots = min(os.cpu_count() or 1, _MAX_WORKERS)  # one per worker the kernel may use
    shape = (x.shape[0], slots, TILE)
    outputs = (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.int32))
    if packed.screen is not None and x.shape[0] <= SCREEN_ROWS:
        value, column = jax.ffi.ffi_call(_SCREENED_TARGETS[jnp.dtype(packed.tiles.dtype)],
                                         outputs)(
            x.astype(jnp.float32), packed.tiles, packed.screen, packed.screen_norms,
            columns=np.int64(columns))
        return value.reshape(x.shape[0], -1), column.reshape(x.shape[0], -1)
    value, column = jax.ffi.ffi_call(
        _ARGMAX_TARGETS[jnp.dtype(packed.tiles.dtype)],
        (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.int32)))(
            x.astype(jnp.float32), packed.tiles, columns=np.int64(columns))
    return value.reshape(x.shape[0], -1), column.reshape(x.shape[0], -1)


def packed_dtype(param_dtype: jnp.dtype) -> jnp.dtype:
    """The dtype weights stored in `param_dtype` are packed in: bf16 stays bf16 (read at half the
    bytes, widened in registers), anything else becomes float32."""
    return jnp.dtype(param_dtype) if jnp.dtype(param_dtype) == jnp.bfloat16 else _F32


def uses_packed_matmul(matmul_dtype: jnp.dtype) -> bool:
    """Whether inference packs its weights: CPU target, float32 matmuls, the kernel available."""
    return (target_platform() == "cpu" and jnp.dtype(matmul_dtype) == jnp.float32
            and kernels_available())
