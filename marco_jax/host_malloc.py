"""Transparent huge pages for XLA's host temporaries when a CLI computes on the CPU.

XLA:CPU allocates an execution's temporaries as one large malloc (1.7 GB for the layers fwd+bwd
of `bench/bench_train_vs_torch.py`'s layer-heavy shape). glibc serves a block that large from a
fresh mmap and unmaps it on free, so on every step the kernel faults in and zero-fills every
4 KiB page again. Measured on the 2-core VM, that bench's marco_jax training step (getrusage, six
steps per process, three processes each, alternated): ~730,000 page faults (2.9 GB) and 1.7-1.8 s
of system time per 5.8-6.2 s step. glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35)
makes it ask for transparent huge pages on such mappings: 4,000-24,000 faults, 0.6-0.7 s of
system time, 5.0-5.3 s steps (10-20% faster), the same peak RSS (3.8 GB).

Tunables are read once, when the process starts, so a CLI started with `python -m marco_jax.<cli>`
re-executes itself with GLIBC_TUNABLES extended, from `import marco_jax`, before any heavy import
(`maybe_reexec_cli`). Only where JAX runs on the CPU only, glibc is new enough and the kernel
offers THP; MARCO_HOST_MALLOC=default, or a GLIBC_TUNABLES that already names the tunable, leaves
the process alone. A notebook cannot re-execute its kernel: start it with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 instead.

Tried and not kept: `mallopt` in-process (one arena, no mmap, no trimming) makes glibc reuse the
freed block outright (0 faults, steps ~17% faster), but one run in three grew the heap to twice
the peak RSS (8.1 vs 3.7 GB: fragmentation in a single arena). Standard library only: this runs
before JAX is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
TUNABLE_SETTING = f"{TUNABLE}=1"
OPT_OUT_VARIABLE = "MARCO_HOST_MALLOC"
# `python -m` targets that re-execute (long-running JAX computations; not the converters).
CLI_MODULES = frozenset({"marco_jax.train", "marco_jax.sft", "marco_jax.dpo",
                         "marco_jax.generate", "marco_jax.evaluate"})
_THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, int] | None:
    """(2, 36) on glibc systems, else None (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(x) for x in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):
        return None
    return (major, minor) if name == "glibc" else None


def kernel_offers_thp(mode_file: Path = _THP_MODE_FILE) -> bool:
    """The kernel's THP mode is `always` or `madvise` (the bracketed word of the sysfs file)."""
    try:
        text = mode_file.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


def cli_module(argv: Sequence[str]) -> str | None:
    """The marco_jax CLI module an interpreter command line runs (`python [opts] -m NAME ...`),
    or None."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            name = argv[i + 1] if i + 1 < len(argv) else None
            return name if name in CLI_MODULES else None
        if arg == "-c" or not arg.startswith("-"):  # code or a script path: not `-m`
            return None
        i += 2 if arg in ("-X", "-W") else 1  # options that take a separate value
    return None


def hugepages_requested(env: Mapping[str, str] | None = None) -> bool:
    """GLIBC_TUNABLES already names the tunable (set by the user, or by our re-execution)."""
    env = os.environ if env is None else env
    return TUNABLE in env.get("GLIBC_TUNABLES", "")


def wants_hugepages(cpu_only: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether GLIBC_TUNABLES should gain `glibc.malloc.hugetlb=1` (see the module docstring);
    `cpu_only`: JAX computes on the CPU only (`platform.jax_runs_on_cpu_only`)."""
    env = os.environ if env is None else env
    if env.get(OPT_OUT_VARIABLE, "").strip().lower() == "default" or hugepages_requested(env):
        return False
    version = glibc_version()
    return cpu_only and version is not None and version >= (2, 35) and kernel_offers_thp()


def reexec_with_hugepages(cpu_only: bool, argv: Sequence[str] | None = None) -> None:
    """Re-executes this interpreter with the tunable when `wants_hugepages`; returns otherwise.
    `os.execve` replaces the process: same pid, arguments (`sys.orig_argv`) and stdio. Call it
    before heavy imports: they run again in the new process."""
    if not wants_hugepages(cpu_only):
        return
    argv = list(sys.orig_argv if argv is None else argv)
    env = dict(os.environ)
    current = env.get("GLIBC_TUNABLES", "")  # other tunables are kept
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE_SETTING}" if current else TUNABLE_SETTING
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # no usable interpreter path (embedded Python): run on without huge pages
        return


def maybe_reexec_cli(cpu_only: Callable[[], bool], argv: Sequence[str] | None = None) -> None:
    """`reexec_with_hugepages` when this interpreter runs `python -m` one of CLI_MODULES
    (`import marco_jax` calls it)."""
    argv = sys.orig_argv if argv is None else argv
    if cli_module(argv) is not None:
        reexec_with_hugepages(cpu_only(), argv)
