"""The CPU kernels of `cpu_kernels/` (C++ XLA FFI custom calls): built at first use, loaded and
registered with XLA once per process.

Build: `g++ -O3 -march=native` (the compiler in $CXX, else g++, c++, clang++) of every `.cc` file
there, one compiler process per file at once, linked into one library in
`$XDG_CACHE_HOME/marco_jax/cpu_kernels/` (default `~/.cache/...`), keyed by the sources, the
compiler and its flags, jaxlib and the host CPU's flags, so a cache shared between machines never
loads code built for another CPU. Once per machine: 16-17 s on a 2-core VM (2026-12-08; 7 s
before the fused decode layer, whose file alone compiles in 10 s).
Without a compiler, or with MARCO_CPU_KERNELS=0, callers keep XLA's ops (one warning line says
why when a build fails). Users: `packed_matmul` (decode matmuls, greedy token choice),
`attention` (a decode step's attention over the KV cache) and `decode_layer` (a decoder layer's
whole one-token step).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

_SOURCES = Path(__file__).parent / "cpu_kernels"
# FFI target -> the library's handler symbol
HANDLERS = {
    "marco_packed_matmul": "MarcoPackedMatmul",
    "marco_packed_matmul_bf16": "MarcoPackedMatmulBf16",
    "marco_packed_argmax": "MarcoPackedArgmax",
    "marco_packed_argmax_bf16": "MarcoPackedArgmaxBf16",
    "marco_packed_argmax_screened": "MarcoPackedArgmaxScreened",
    "marco_packed_argmax_screened_bf16": "MarcoPackedArgmaxScreenedBf16",
    "marco_decode_attention": "MarcoDecodeAttention",
    "marco_decode_attention_write": "MarcoDecodeAttentionWrite",
    "marco_decode_layer": "MarcoDecodeLayer",
    "marco_decode_layer_bf16": "MarcoDecodeLayerBf16",
}
_OFF = ("0", "false", "no", "off")
_COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-DNDEBUG")
_LINK_FLAGS = ("-shared",)


def kernels_enabled() -> bool:
    """False when MARCO_CPU_KERNELS is 0/false/no/off (XLA's ops everywhere)."""
    return os.environ.get("MARCO_CPU_KERNELS", "1").strip().lower() not in _OFF


def kernels_available() -> bool:
    """Whether the kernels can run in this process: enabled, and the library built (or found
    built) and registered with XLA. The first call on a machine compiles it (~16 s on 2 cores)."""
    return kernels_enabled() and load_error() is None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "marco_jax" / "cpu_kernels"


def _sources() -> list[Path]:
    return sorted(_SOURCES.glob("*.cc"))


def _compiler() -> str:
    """The C++ compiler to build with: $CXX, else g++, c++, clang++; RuntimeError if none."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    raise RuntimeError("no C++ compiler found ($CXX, g++, c++, clang++)")


def _cpu_flags() -> str:
    """The host CPU's model and feature flags (-march=native builds for exactly these)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    jaxlib_version = getattr(jax.lib, "__version__", "")
    texts = [f.read_text() for f in sorted([*_SOURCES.glob("*.cc"), *_SOURCES.glob("*.h")])]
    key = hashlib.sha256("\n".join([
        *texts, compiler, *_COMPILE_FLAGS, *_LINK_FLAGS, *version, jax.__version__, jaxlib_version,
        platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    return cache_dir() / f"kernels-{key}.so"


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


# Leftovers a build removes from the cache: temporary files (a library, a folder of objects) of
# builds killed over an hour ago, and libraries of the earlier single-kernel layout (replaced by
# `kernels-<key>.so`). Libraries of other keys stay: a cache shared by hosts with other CPUs
# holds one per host.
_STALE_TMP_SECONDS = 3600
_OLD_LIBRARIES = "packed_matmul-*.so"


def _remove_leftovers(folder: Path) -> None:
    now = time.time()
    for path in [*folder.glob("tmp*"), *folder.glob(_OLD_LIBRARIES)]:
        try:
            if path.name.startswith("tmp") and now - path.stat().st_mtime < _STALE_TMP_SECONDS:
                continue  # maybe another process's build in progress
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def compile_library(sources: list[Path], out: Path, compiler: str | None = None) -> None:
    """Compile `sources` into the shared library `out` as the package builds its own (flags
    above; each source in its own compiler process, all at once, then one link); RuntimeError
    with the compiler's first error line if it fails. `bench/bench_kernel_builds.py` builds other
    versions of the sources with it."""
    compiler = compiler or _compiler()
    with tempfile.TemporaryDirectory(dir=out.parent) as folder:
        objects = [str(Path(folder) / f"{i}-{source.stem}.o") for i, source in enumerate(sources)]
        commands = [[compiler, *_COMPILE_FLAGS, "-isystem", jax.ffi.include_dir(), "-c",
                     str(source), "-o", obj] for source, obj in zip(sources, objects, strict=True)]
        jobs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True) for cmd in commands]
        errors = [job.communicate()[1] for job in jobs]  # all finish before any failure is raised
        for cmd, job, error in zip(commands, jobs, errors, strict=True):
            _raise_if_failed(cmd, job.returncode, error)
        cmd = [compiler, *_LINK_FLAGS, *objects, "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        _raise_if_failed(cmd, done.returncode, done.stderr)


def _raise_if_failed(cmd: list[str], returncode: int, stderr: str) -> None:
    """RuntimeError naming the command and the compiler's first `error:` line (else its last)."""
    if returncode != 0:
        lines = stderr.strip().splitlines() or ["no output"]
        line = next((text for text in lines if "error:" in text), lines[-1]).strip()
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed: {line}")


def _build(compiler: str, out: Path) -> None:
    """Compile into a temporary file beside `out`, then rename: concurrent builders never load a
    half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out.parent)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        compile_library(_sources(), Path(tmp), compiler)
        os.chmod(tmp, 0o755 & ~_umask())  # mkstemp's 0600 would keep other users of a cache out
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The loaded kernel library (for its plain C functions), or None where `load_error()`."""
    return _load()[0]


def load_error() -> str | None:
    """Build (or find) the library and register its handlers, once per process: None, or why it
    failed (reported once on stderr; XLA's ops stay in place)."""
    return _load()[1]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None), or (None, why it failed): `load_error`, once per process."""
    try:
        compiler = _compiler()
        path = _library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        library = ctypes.CDLL(str(path))
        for target, handler in HANDLERS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, handler)),
                                        platform="cpu")
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        print(f"warning: CPU kernels unavailable, using XLA's ops: {e}", file=sys.stderr)
        return None, str(e)
    return library, None
