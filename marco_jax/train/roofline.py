"""Whole-step FLOPs and HBM bytes per chip of a train step, as XLA's TPU compiler counts them, and
the roofline step time they imply.

XLA's cost analysis counts a while-loop body once whatever its trip count, and the real step has
three loops (layer scan, loss-chunk scan, grad-accumulation scan). So the figures come from two
loop-free "counting" compiles of the same step on the same mesh: layers unrolled (1 and 2 of
them), whole-sequence loss, one micro-batch of the real micro-batch rows per data shard
(r = rows / (data shards x grad_accum_steps)), the config's remat policy (recompute is work the
chip does). Layers are identical, so cost(L) = cost(1) + (L - 1) (cost(2) - cost(1)) is exact
(FLOPs to 0.1% against 5-layer loop-free compiles of tiny models; bytes to 6% there, where the
compiler prefetches whole toy-sized stacked params into VMEM, and to 0.7% over 1-4 layer compiles
of the 7B at MaxText's settings); the step is
grad_accum_steps x cost(layers). Rows are compiled, not extrapolated: XLA's bytes are not linear
in rows (weight gathers do not scale with rows, and fusion choices change with the row count; a
bilinear fit over 1-2 rows missed a 6-row compile by -11% / +28% with splash / XLA attention).
The optimizer update, run once per step, is thereby counted grad_accum_steps times: a negligible
overcount (about 28 bytes and 20 FLOPs per parameter per chip against the 1e12+ of a step).

Pallas kernels (splash attention) are opaque to XLA's cost analysis: zero FLOPs, operands and
results read once. Their work is added per kernel call found in each counting compile's HLO
(`marco_jax.model.attention.splash_cost`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from marco_jax.config import Experiment
from marco_jax.model.attention import KV_AXES, Q_AXES, splash_cost
from marco_jax.model.config import Qwen2Config, from_experiment
from marco_jax.parallel import build_mesh, data_parallel_size, logical_to_spec

_SPLASH_CALL = re.compile(r"^\s*(?:ROOT\s+)?%?splash_mha_(fwd|dq|dkv)\w*(?:\.\d+)?\s*=.*"
                          r"custom-call\(", re.MULTILINE)


@dataclasses.dataclass
class StepCost:
    flops: float  # per chip per step, loops counted as often as they run
    bytes: float  # HBM bytes accessed per chip per step
    kernel_flops: float  # of which Pallas kernels (added by hand, see module doc)
    points: dict[int, tuple[float, float, float]]  # layers -> (flops, bytes, kernel flops)


def xla_cost(compiled: Any) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of a compiled module as XLA counts them (loop bodies once,
    Pallas kernels opaque)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def splash_calls(hlo_text: str) -> dict[str, int]:
    """Splash kernel calls per phase in a compiled module's HLO text."""
    calls = {"fwd": 0, "dq": 0, "dkv": 0}
    for phase in _SPLASH_CALL.findall(hlo_text):
        calls[phase] += 1
    return calls


def local_heads(model_cfg: Qwen2Config, mesh: Any) -> int:
    """Query heads per chip in the splash shard_map (as `attention.splash_attention` splits)."""
    h, kv, d = (model_cfg.num_attention_heads, model_cfg.num_key_value_heads,
                model_cfg.dim_per_head)
    q_spec = logical_to_spec(Q_AXES, (1, 1, h, d), mesh)
    kv_spec = logical_to_spec(KV_AXES, (1, 1, kv, d), mesh)
    if q_spec[2] is None or q_spec[2] != kv_spec[2]:
        return h
    axes = (q_spec[2],) if isinstance(q_spec[2], str) else q_spec[2]
    return h // math.prod(mesh.shape[a] for a in axes)


def kernel_cost(hlo_text: str, model_cfg: Qwen2Config, rows: int, heads: int,
                seq_len: int) -> tuple[float, float]:
    """(FLOPs, extra bytes) of the splash calls in `hlo_text`; each call covers `rows` x
    `heads` (row, query head) pairs of this chip."""
    flops = extra = 0.0
    itemsize = model_cfg.jnp_dtype.itemsize
    for phase, n in splash_calls(hlo_text).items():
        f, b = splash_cost(phase, seq_len, model_cfg.dim_per_head, itemsize)
        flops += n * rows * heads * f
        extra += n * rows * heads * b
    return flops, extra


def counting_config(config: Experiment, layers: int, rows: int) -> Experiment:
    model = dataclasses.replace(config.model, scan_layers=False, overrides={
        **config.model.overrides, "num_hidden_layers": layers})
    return config.replace(model=model,
                          train=dataclasses.replace(config.train, loss_chunk=0),
                          optim=dataclasses.replace(config.optim, grad_accum_steps=1),
                          data=dataclasses.replace(config.data, global_batch_size=rows))


def count_step_cost(config: Experiment, devices: list[Any], lower: Callable[..., Any]) -> StepCost:
    """Per-chip FLOPs and bytes of one train step from two loop-free compiles (module doc).
    `lower(config, devices)[0]` lowers the step (`aot_fit.lower_train_step`)."""
    model_cfg = from_experiment(config.model)
    mesh = build_mesh(config.mesh.ici, config.mesh.dcn, devices)
    dp = data_parallel_size(mesh)
    accum = config.optim.grad_accum_steps
    rows, rest = divmod(config.data.global_batch_size, dp * accum)
    if rest:
        raise ValueError(f"data.global_batch_size={config.data.global_batch_size} is not a "
                         f"multiple of data shards {dp} x optim.grad_accum_steps={accum}")
    heads = local_heads(model_cfg, mesh)
    points: dict[int, tuple[float, float, float]] = {}
    for layers in (1, 2):
        lowered = lower(counting_config(config, layers, rows * dp), devices)[0]
        compiled = lowered.compile()
        flops, nbytes = xla_cost(compiled)
        kf, kb = kernel_cost(compiled.as_text(), model_cfg, rows, heads, config.data.seq_len)
        points[layers] = (flops + kf, nbytes + kb, kf)
    n = model_cfg.num_hidden_layers
    whole = [accum * (one + (n - 1) * (two - one))
             for one, two in zip(points[1], points[2], strict=True)]
    return StepCost(flops=whole[0], bytes=whole[1], kernel_flops=whole[2], points=points)


def roofline_seconds(flops: float, nbytes: float, peak_flops: float,
                     hbm_bytes_per_s: float) -> float:
    """Step time if the chip ran at its compute roof or its memory roof, whichever binds."""
    return max(flops / peak_flops, nbytes / hbm_bytes_per_s if hbm_bytes_per_s else 0.0)
