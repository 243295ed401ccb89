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
to the next tokens inside the kernel (`packed_argmax_parts`). Training keeps XLA's dots (the
kernel has no gradient). bf16 matmuls keep XLA's dots too (AMX tiles on CPUs that have them);
bf16 weights under float32 matmuls are packed as stored, in bf16, and widened to float32 in
registers (half the bytes of a float32 copy; XLA:CPU converts them to float32 copies in every
call instead).

Build: `g++ -O3 -march=native` (the compiler in $CXX, else g++, c++, clang++) into
`$XDG_CACHE_HOME/marco_jax/cpu_kernels/` (default `~/.cache/...`), keyed by the source, the
compiler, jaxlib and the host CPU's flags, so a cache shared between machines never loads code
built for another CPU. About 2 s, once per machine. Without a compiler, or with
MARCO_CPU_KERNELS=0, the matmuls stay XLA's (one warning line says why when a build fails).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.target import target_platform

TILE = 32  # output columns per packed tile (kTile in the kernel)
_TARGET = "marco_packed_matmul"
_ARGMAX_TARGET = "marco_packed_argmax"
# tiles dtype -> FFI target (and the library's handler symbol)
_TARGETS = {jnp.dtype(jnp.float32): _TARGET, jnp.dtype(jnp.bfloat16): _TARGET + "_bf16"}
_ARGMAX_TARGETS = {jnp.dtype(jnp.float32): _ARGMAX_TARGET,
                   jnp.dtype(jnp.bfloat16): _ARGMAX_TARGET + "_bf16"}
_HANDLERS = {_TARGET: "MarcoPackedMatmul", _TARGET + "_bf16": "MarcoPackedMatmulBf16",
             _ARGMAX_TARGET: "MarcoPackedArgmax", _ARGMAX_TARGET + "_bf16": "MarcoPackedArgmaxBf16"}
_SOURCE = Path(__file__).parent / "cpu_kernels" / "packed_matmul.cc"
_OFF = ("0", "false", "no", "off")
_MAX_WORKERS = 64  # threads greedy decoding's kernel shares the head's tiles among, at most
_F32 = jnp.dtype(jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedKernel:
    """A Linear kernel [k1..kc, n...] packed for `packed_matmul`: tiles [ceil(N / 32), K, 32] in
    float32 or bfloat16, K = k1*..*kc, N = prod(n...) (zero columns pad the last tile);
    `out_shape` is (n...)."""
    tiles: jax.Array
    out_shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})

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


def unpack_kernel(packed: PackedKernel) -> jax.Array:
    """The kernel [K, n...] a `PackedKernel` was packed from (contract axes flattened), in the
    packed dtype."""
    t, k, _ = packed.tiles.shape
    w = packed.tiles.transpose(1, 0, 2).reshape(k, t * TILE)[:, : packed.out_features]
    return w.reshape(k, *packed.out_shape)


def packed_matmul(x: jax.Array, packed: PackedKernel) -> jax.Array:
    """x [..., K] @ the packed kernel -> [..., n...] float32 (x in float32, bf16 weights widened
    to float32; products summed in float32, tile by tile: the sums of a float32 dot up to the
    order of addition). CPU only; no gradient. Needs `kernels_available()`."""
    error = _load_error()
    if error is not None:
        raise RuntimeError(f"{_TARGET}: the CPU kernel is not available ({error})")
    k = packed.in_features
    if jnp.dtype(packed.tiles.dtype) not in _TARGETS:
        raise ValueError(f"packed_matmul: tiles of {packed.tiles.dtype}; expected float32 or "
                         "bfloat16")
    if x.shape[-1] != k:
        raise ValueError(f"packed_matmul: x has {x.shape[-1]} features, the kernel {k}")
    lead = x.shape[:-1]
    rows = x.reshape(-1, k).astype(jnp.float32)
    padded = packed.tiles.shape[0] * TILE
    target = _TARGETS[jnp.dtype(packed.tiles.dtype)]
    y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], padded), jnp.float32))(
        rows, packed.tiles)
    if padded != packed.out_features:
        y = y[:, : packed.out_features]
    return y.reshape(*lead, *packed.out_shape)


def packed_argmax_parts(x: jax.Array, packed: PackedKernel, columns: int | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding's heavy half, without writing the logits: x [M, K] @ the packed kernel
    (one output axis) over its first `columns` columns (default all; the others are never
    read), reduced while the products are in registers to candidates (value [M, C] float32,
    column [M, C] int32): the kernel's workers each keep, per 32-column lane, the largest
    product they met and its first column (NaN above every number). Row r's argmax with
    jnp.argmax's ties and NaNs is the smallest candidate column holding its largest value, or
    its first NaN (`infer.sampling.packed_greedy_tokens`). CPU only; needs
    `kernels_available()`."""
    error = _load_error()
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
    value, column = jax.ffi.ffi_call(
        _ARGMAX_TARGETS[jnp.dtype(packed.tiles.dtype)],
        (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.int32)))(
            x.astype(jnp.float32), packed.tiles, columns=np.int64(columns))
    return value.reshape(x.shape[0], -1), column.reshape(x.shape[0], -1)


def kernels_enabled() -> bool:
    """False when MARCO_CPU_KERNELS is 0/false/no/off (XLA's dots everywhere)."""
    return os.environ.get("MARCO_CPU_KERNELS", "1").strip().lower() not in _OFF


def kernels_available() -> bool:
    """Whether `packed_matmul` can run in this process: enabled, and the kernel built (or found
    built) and registered with XLA. The first call on a machine compiles it (~2 s)."""
    return kernels_enabled() and _load_error() is None


def packed_dtype(param_dtype: jnp.dtype) -> jnp.dtype:
    """The dtype weights stored in `param_dtype` are packed in: bf16 stays bf16 (read at half the
    bytes, widened in registers), anything else becomes float32."""
    return jnp.dtype(param_dtype) if jnp.dtype(param_dtype) == jnp.bfloat16 else _F32


def uses_packed_matmul(matmul_dtype: jnp.dtype) -> bool:
    """Whether inference packs its weights: CPU target, float32 matmuls, the kernel available."""
    return (target_platform() == "cpu" and jnp.dtype(matmul_dtype) == jnp.float32
            and kernels_available())


# -- building and loading ---------------------------------------------------------------------

def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    """The host CPU's model and feature flags (-march=native builds for exactly these)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "marco_jax" / "cpu_kernels"


_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-DNDEBUG")


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    jaxlib_version = getattr(jax.lib, "__version__", "")
    key = hashlib.sha256("\n".join([
        _SOURCE.read_text(), compiler, *_FLAGS, *version, jax.__version__, jaxlib_version,
        platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    return cache_dir() / f"packed_matmul-{key}.so"


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _build(compiler: str, out: Path) -> None:
    """Compile into a temporary file beside `out`, then rename: concurrent builders never load a
    half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [compiler, *_FLAGS, "-isystem", jax.ffi.include_dir(), str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed: {last}")
        os.chmod(tmp, 0o755 & ~_umask())  # mkstemp's 0600 would keep other users of a cache out
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load_error() -> str | None:
    """Build (or find) the library and register its handlers, once per process: None, or why it
    failed (reported once on stderr; XLA's dots stay in place)."""
    try:
        compiler = _compiler()
        if compiler is None:
            raise RuntimeError("no C++ compiler found ($CXX, g++, c++, clang++)")
        path = _library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        library = ctypes.CDLL(str(path))
        for target, handler in _HANDLERS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, handler)),
                                        platform="cpu")
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        print(f"warning: CPU matmul kernel unavailable, using XLA's dots: {e}", file=sys.stderr)
        return str(e)
    return None
