"""TPU slices by their gcloud accelerator-type names (v4-128, v5litepod-256, v5p-512, v6e-256), and
compile-only devices for them so a CPU machine can compile for a slice it does not have.

Chip facts are Cloud TPU's published per-chip figures (HBM bandwidth in bytes/s: v4 1200 GB/s,
v5e 819, v5p 2765, v6e 1640; HBM taken as GiB; the AOT fit check keeps
a headroom below it for the runtime's own reservations).
gcloud counts TensorCores for v4 and v5p (two per chip, one "megacore" device) and chips for v5e
and v6e; `TpuSlice.chips` is always chips (= JAX devices).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class TpuChip:
    generation: str  # gcloud prefix: v4, v5p, v5litepod, v6e
    topology_prefix: str  # libtpu's name: "v4:2x2x1", "v5p:4x4x4", "v5e:16x16", "v6e:16x16"
    device_kind: str  # what jax reports as device_kind
    hbm_bytes: int
    peak_bf16_flops: float
    cores_per_chip: int  # gcloud's count per chip
    dims: int  # 3: 3D torus (v4, v5p), 2: 2D (v5e, v6e)
    chip_config_name: str
    hbm_bytes_per_s: float = 0.0  # published HBM bandwidth per chip (the roofline's memory roof)


CHIPS: dict[str, TpuChip] = {
    "v4": TpuChip("v4", "v4", "TPU v4", 32 * GIB, 275e12, 2, 3, "megacore", 1200e9),
    "v5p": TpuChip("v5p", "v5p", "TPU v5", 95 * GIB, 459e12, 2, 3, "megacore", 2765e9),
    "v5litepod": TpuChip("v5litepod", "v5e", "TPU v5 lite", 16 * GIB, 197e12, 1, 2, "default",
                         819e9),
    "v6e": TpuChip("v6e", "v6e", "TPU v6 lite", 32 * GIB, 918e12, 1, 2, "default", 1640e9),
}
ALIASES = {"v5e": "v5litepod"}

# Chips -> physical shape of the standard single-slice topologies.
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
             256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str  # as given, e.g. "v5p-128"
    chip: TpuChip
    shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Torus wrap-around links: 3D slices wrap on dims of 4+ chips (full cubes), 2D slices
        only on the pod's full 16-chip dims."""
        full = 4 if self.chip.dims == 3 else 16
        dims = (*self.shape, 1, 1)[:3]
        return tuple(d >= full for d in dims)  # type: ignore[return-value]

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Chips per host along each dimension: 2x2x1 (4-chip hosts), less on a tiny slice."""
        dims = (*self.shape, 1, 1)[:3]
        return tuple(min(d, b) for d, b in zip(dims, (2, 2, 1), strict=True))  # type: ignore

    def describe(self) -> str:
        slices = f"{self.num_slices} x " if self.num_slices > 1 else ""
        return (f"{slices}{self.name} ({self.topology_name}, {self.chips} chips of "
                f"{self.chip.hbm_bytes / GIB:.0f} GiB HBM, "
                f"{self.chip.peak_bf16_flops / 1e12:.0f} bf16 TFLOP/s)")


def parse_slice(name: str, num_slices: int = 1) -> TpuSlice:
    """'v5p-128' -> TpuSlice (64 chips, 4x4x4). Raises naming the accepted forms."""
    m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name.strip())
    if not m:
        raise ValueError(f"topology {name!r}: expected a gcloud accelerator type like v4-128, "
                         f"v5p-512, v5litepod-256 or v6e-256 (generations {sorted(CHIPS)})")
    gen, count = ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
    chip = CHIPS[gen]
    if count % chip.cores_per_chip:
        raise ValueError(f"topology {name!r}: {gen} counts {chip.cores_per_chip} cores per chip; "
                         f"{count} is not a multiple")
    chips = count // chip.cores_per_chip
    shapes = SHAPES_3D if chip.dims == 3 else SHAPES_2D
    if chips not in shapes:
        sizes = sorted(k * chip.cores_per_chip for k in shapes)
        raise ValueError(f"topology {name!r}: no standard {gen} slice of {chips} chips; "
                         f"known sizes {sizes}")
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices}: expected >= 1")
    return TpuSlice(name.strip(), chip, shapes[chips], num_slices)


def topology_devices(tpu_slice: TpuSlice) -> list[Any]:
    """Compile-only TPU devices for the slice(s); needs libtpu (`pip install -e .[tpu]`)."""
    import os

    from jax.experimental import topologies

    # Compile-only use touches no chip; without this a second process (a test's subprocess, a
    # training job on a TPU VM) would be refused by libtpu's single-process lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(
            tpu_slice.topology_name, "tpu", chip_config_name=tpu_slice.chip.chip_config_name,
            chips_per_host_bounds=tpu_slice.chips_per_host_bounds,
            num_slices=tpu_slice.num_slices,
            wrap=tpu_slice.wrap)
    except Exception as e:  # libtpu missing or topology rejected
        raise RuntimeError(f"cannot describe {tpu_slice.describe()} for AOT compilation: {e}. "
                           "Is libtpu installed (pip install -e .[tpu])?") from e
    devices = list(desc.devices)
    if len(devices) != tpu_slice.chips:
        raise RuntimeError(f"{tpu_slice.topology_name}: libtpu gave {len(devices)} devices, "
                           f"expected {tpu_slice.chips}")
    return devices
