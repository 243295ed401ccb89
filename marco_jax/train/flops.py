"""Device peaks for MFU.

MFU = (model FLOPs per token x tokens per second) / (peak FLOP/s per device x devices), with the
model FLOPs per token of `Qwen2Config.train_flops_per_token` (6N + causal attention; the formula
is documented there). Peak: the chip's published dense bf16 figure on TPU/GPU; on CPU the
measured fp32 matmul rate (`measure_matmul_flops`), since no published figure applies.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Published dense bf16 peak FLOP/s per device (jax device_kind substring -> FLOP/s).
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
)


def measure_matmul_flops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul on the default device."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def peak_flops_per_device(override: float = 0.0) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from) for the first local device."""
    if override > 0:
        return override, "config"
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops, f"published bf16 peak of {kind}"
    return measure_matmul_flops(), f"measured fp32 matmul on {kind}"
