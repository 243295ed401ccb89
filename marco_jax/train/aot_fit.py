"""Ahead-of-time proof that a config's train step fits a TPU slice, compiled on this machine.

The step compiled is the trainer's own (`make_train_step` + `jit_train_step`, explicit in/out
shardings, donated state) for compile-only devices of the target slice, so the figures are XLA's
TPU compiler's: per-chip argument/output/temporary bytes, and the FLOPs of the compiled program.

FLOPs and HBM bytes per step: XLA's cost analysis counts a while-loop body once, whatever its trip
count, so both come from loop-free counting compiles of 1 and 2 layers at the real micro-batch
rows, extrapolated in layers (`marco_jax.train.roofline`); they include the config's
rematerialisation (work the chip does) and the splash kernels' work (opaque to XLA, added per
kernel call). Beside them:
the roofline step time max(FLOPs / peak, bytes / HBM bandwidth) (FLOPs floored at the model's,
`FitReport.roofline_flops_per_chip`), its tokens/s/chip, and the analytic 6N + causal-attention
model FLOPs. Attention `auto` resolves for the slice's platform
(splash on TPU), not this host's.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from marco_jax.config import Experiment
from marco_jax.model.config import Qwen2Config, from_experiment
from marco_jax.model.init import abstract_model
from marco_jax.model.target import compile_target
from marco_jax.parallel import (
    batch_sharding,
    build_mesh,
    data_parallel_size,
    explain_fallbacks,
    pure_dict_shardings,
    with_shardings,
)
from marco_jax.parallel.topologies import GIB, TpuSlice, topology_devices
from marco_jax.train.lm import LM_BATCH_KEYS
from marco_jax.train.objectives import abstract_batch as objective_batch
from marco_jax.train.objectives import objective_for
from marco_jax.train.optimizer import make_optimizer, make_schedule
from marco_jax.train.roofline import count_step_cost, roofline_seconds
from marco_jax.train.state import abstract_train_state, train_state_shardings
from marco_jax.train.step import jit_train_step, make_train_step

DEFAULT_HEADROOM = 0.05  # of HBM kept free for the runtime, fragmentation and input buffers
DEFAULT_MFU = 0.40


@dataclasses.dataclass
class FitReport:
    slice_desc: str
    mesh: dict[str, int]
    global_batch: int
    seq_len: int
    capacity_bytes: int
    headroom: float
    fits: bool
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    compiled_flops_per_chip: float = 0.0  # per step, loops counted in full (see module doc)
    step_bytes_per_chip: float = 0.0  # HBM bytes accessed per step, loops counted in full
    kernel_flops_per_chip: float = 0.0  # of compiled_flops_per_chip: Pallas kernels, by hand
    hbm_bytes_per_s: float = 0.0
    loop_body_flops_per_chip: float = 0.0  # XLA's own count for the real program (bodies once)
    model_flops_per_step: float = 0.0
    chips: int = 1
    peak_flops_per_chip: float = 0.0
    mfu: float = DEFAULT_MFU
    compile_seconds: float = 0.0
    error: str = ""
    fallbacks: list[str] = dataclasses.field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Peak per-chip HBM: live inputs, outputs not aliased to (donated) inputs, temporaries
        and the program itself."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def budget_bytes(self) -> float:
        return self.capacity_bytes * (1.0 - self.headroom)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def step_seconds(self) -> float:
        """Step time if the compiled per-chip FLOPs (floored at the model's, as the roofline's)
        run at `mfu` of the chip's peak."""
        return self.roofline_flops_per_chip / (self.peak_flops_per_chip * self.mfu)

    @property
    def tokens_per_second_per_chip(self) -> float:
        return self.tokens_per_step / self.step_seconds / self.chips

    @property
    def roofline_flops_per_chip(self) -> float:
        """The FLOPs the roofline charges: the compiled count, floored at the model's own FLOPs
        per chip (6N + attention), which no step can do less of. XLA's cost analysis can count
        less: on the sharded 0.5B layout (v5p-16, q/k/v/MLP dots rewritten as windowed
        convolutions) a layer's compiled count, 5.03e12 per micro-step per chip, is below even
        its forward + backward matmuls (5.86e12 by hand; 7.82e12 with full remat's recompute)."""
        if not self.chips:
            return self.compiled_flops_per_chip
        return max(self.compiled_flops_per_chip, self.model_flops_per_step / self.chips)

    @property
    def flops_floored(self) -> bool:
        return self.roofline_flops_per_chip > self.compiled_flops_per_chip

    @property
    def roofline_seconds(self) -> float:
        """max(FLOPs / peak, bytes / HBM bandwidth) per chip: no step runs faster."""
        return roofline_seconds(self.roofline_flops_per_chip, self.step_bytes_per_chip,
                                self.peak_flops_per_chip, self.hbm_bytes_per_s)

    @property
    def roofline_tokens_per_second_per_chip(self) -> float:
        seconds = self.roofline_seconds
        return self.tokens_per_step / seconds / self.chips if seconds else 0.0

    @property
    def model_flops_utilisation_ceiling(self) -> float:
        """Model FLOPs / compiled FLOPs: the MFU reached if the hardware ran at 100% of peak
        (below 1 by rematerialisation and masked attention work)."""
        total = self.compiled_flops_per_chip * self.chips
        return self.model_flops_per_step / total if total else 0.0

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
        out = [f"slice        {self.slice_desc}",
               f"mesh         {self.mesh}",
               f"batch        {self.global_batch} x {self.seq_len} = {self.tokens_per_step:,} "
               "tokens per step"]
        if self.error:
            out.append(f"compile      FAILED: {self.error}")
        else:
            margin = self.capacity_bytes - self.total_bytes
            out += [f"HBM/chip     arguments {g(self.argument_bytes)}",
                    f"             outputs   {g(self.output_bytes)} "
                    f"(aliased to donated inputs {g(self.alias_bytes).strip()})",
                    f"             temps     {g(self.temp_bytes)}",
                    f"             code      {g(self.code_bytes)}",
                    f"             total     {g(self.total_bytes)} of {g(self.capacity_bytes)} "
                    f"capacity: margin {margin / GIB:.2f} GiB "
                    f"({margin / self.capacity_bytes:.1%}; required {self.headroom:.0%})"]
            if self.compiled_flops_per_chip:
                out += self._cost_lines()
            out.append(f"compile      {self.compile_seconds:.0f} s")
        out += [f"note         {f}" for f in self.fallbacks[:8]]
        if len(self.fallbacks) > 8:
            out.append(f"note         ... and {len(self.fallbacks) - 8} more unsplit dimensions")
        out.append(f"fits         {'YES' if self.fits else 'NO'}")
        return out

    def _cost_lines(self) -> list[str]:
        floored = " (model FLOPs: the compiled count is below them)" if self.flops_floored else ""
        return [f"FLOPs/step   {self.compiled_flops_per_chip:.4g} per chip (compiled), "
                f"{self.compiled_flops_per_chip * self.chips:.4g} in all; model "
                f"{self.model_flops_per_step:.4g} "
                f"(ratio {self.model_flops_utilisation_ceiling:.2f}; XLA's count for the "
                f"scanned program, loop bodies once: {self.loop_body_flops_per_chip:.4g})",
                f"bytes/step   {self.step_bytes_per_chip:.4g} per chip (HBM accessed; "
                f"kernel FLOPs added by hand {self.kernel_flops_per_chip:.4g})",
                f"roofline     step {self.roofline_seconds:.3f} s = max(FLOPs "
                f"{self.roofline_flops_per_chip / self.peak_flops_per_chip:.3f} s"
                f"{floored}, bytes "
                f"{self.step_bytes_per_chip / max(self.hbm_bytes_per_s, 1.0):.3f} s), "
                f"{self.roofline_tokens_per_second_per_chip:,.0f} tokens/s/chip; model "
                f"(6N + attention) {self.model_flops_per_step / self.chips:.4g} FLOPs/chip",
                f"at {self.mfu:.0%} MFU   step {self.step_seconds:.3f} s, "
                f"{self.tokens_per_second_per_chip:,.0f} tokens/s/chip"]


def abstract_batch(global_batch: int, seq_len: int, sharding: Any,
                   keys: tuple[str, ...] = LM_BATCH_KEYS) -> dict[str, Any]:
    """Abstract [global_batch, seq_len] int32 inputs for token-level keys (the LM batch)."""
    return {k: jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=sharding)
            for k in keys}


def lower_train_step(config: Experiment, devices: list[Any], objective: Any = None
                     ) -> tuple[Any, Any, Qwen2Config]:
    """Lower the trainer's jitted step for `devices` (real or compile-only) with abstract
    inputs. Returns (lowered, mesh, model config). `objective` defaults to the one the config
    trains (`train.objective`); an objective with a frozen reference model (DPO with
    dpo.reference="model") gets the reference params as a third, sharded argument."""
    model_cfg = from_experiment(config.model)
    mesh = build_mesh(config.mesh.ici, config.mesh.dcn, devices)
    b, t = config.data.global_batch_size, config.data.seq_len
    dp = data_parallel_size(mesh)
    if b % dp:
        raise ValueError(f"data.global_batch_size={b} is not divisible by the data-parallel size "
                         f"{dp} of mesh {dict(mesh.shape)}")
    objective = objective or objective_for(config, ["all"])
    graphdef, abstract = abstract_model(model_cfg)
    param_shardings = pure_dict_shardings(abstract, mesh)
    tx = make_optimizer(config.optim, config.train.steps)
    state = abstract_train_state(nnx.to_pure_dict(abstract), tx)
    state_shardings = train_state_shardings(state, param_shardings, mesh, tx)
    step = make_train_step(graphdef, tx, objective, make_schedule(config.optim,
                                                                  config.train.steps),
                           config.optim.grad_accum_steps)
    reference = (param_shardings,) if objective.needs_reference else ()
    jitted = jit_train_step(step, state_shardings, batch_sharding(mesh), mesh, *reference)
    args = [with_shardings(state, state_shardings),
            objective_batch(objective, b, t, batch_sharding(mesh))]
    if reference:
        args.append(with_shardings(state.params, param_shardings))
    with compile_target(devices[0].platform):  # the slice's kernels and layouts, not this host's
        lowered = jitted.lower(*args)
    return lowered, mesh, model_cfg


def _cost_flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def counted_flops_per_chip(config: Experiment, devices: list[Any]) -> float:
    """Per-chip FLOPs of one train step from loop-free compiles (module doc)."""
    return count_step_cost(config, devices, lower_train_step).flops


def check_fit(config: Experiment, tpu_slice: TpuSlice, headroom: float = DEFAULT_HEADROOM,
              mfu: float = DEFAULT_MFU) -> FitReport:
    """Compile the config's train step for `tpu_slice` and report whether it fits per chip."""
    devices = topology_devices(tpu_slice)
    t0 = time.perf_counter()
    lowered, mesh, model_cfg = lower_train_step(config, devices)
    b, t = config.data.global_batch_size, config.data.seq_len
    report = FitReport(
        slice_desc=tpu_slice.describe(), mesh=dict(mesh.shape), global_batch=b, seq_len=t,
        capacity_bytes=tpu_slice.chip.hbm_bytes, headroom=headroom, fits=False,
        chips=tpu_slice.chips, peak_flops_per_chip=tpu_slice.chip.peak_bf16_flops, mfu=mfu,
        hbm_bytes_per_s=tpu_slice.chip.hbm_bytes_per_s,
        model_flops_per_step=model_cfg.train_flops_per_token(t) * b * t,
        fallbacks=explain_fallbacks(abstract_model(model_cfg)[1], mesh))
    try:
        compiled = lowered.compile()
    except Exception as e:  # XLA's out-of-memory verdict is a compile error
        report.compile_seconds = time.perf_counter() - t0
        report.error = _short_error(e)
        return report
    report.compile_seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    report.argument_bytes = int(mem.argument_size_in_bytes)
    report.output_bytes = int(mem.output_size_in_bytes)
    report.alias_bytes = int(mem.alias_size_in_bytes)
    report.temp_bytes = int(mem.temp_size_in_bytes)
    report.code_bytes = int(mem.generated_code_size_in_bytes)
    report.loop_body_flops_per_chip = _cost_flops(compiled)
    try:  # the counting compiles (no loops) may not fit where the real step does
        cost = count_step_cost(config, devices, lower_train_step)
    except Exception as e:
        report.fallbacks.insert(0, f"FLOPs/bytes not counted: a loop-free counting compile "
                                   f"failed: {_short_error(e)}")
    else:
        report.compiled_flops_per_chip = cost.flops
        report.step_bytes_per_chip = cost.bytes
        report.kernel_flops_per_chip = cost.kernel_flops
    report.compile_seconds = time.perf_counter() - t0
    report.fits = report.total_bytes <= report.budget_bytes
    return report


def _short_error(e: Exception) -> str:
    text = str(e)
    m = re.search(r"(RESOURCE_EXHAUSTED[^\n]*|Ran out of memory[^\n]*)", text)
    line = m.group(1) if m else text.strip().splitlines()[0] if text.strip() else repr(e)
    return line[:400]
