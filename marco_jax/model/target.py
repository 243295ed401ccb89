"""Which platform the model is being traced for: the default backend, or the one set with
`compile_target` (the AOT tool compiles TPU programs on a CPU host and must get the TPU kernels
and layouts, not the CPU ones)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "model_target_platform", default=None)


@contextlib.contextmanager
def compile_target(platform: str) -> Iterator[None]:
    """Trace the model for `platform` ("tpu", "gpu", "cpu") instead of the default backend."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def target_platform() -> str:
    return _TARGET_PLATFORM.get() or jax.default_backend()
