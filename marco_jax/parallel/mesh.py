"""Device meshes from config: axes `data`, `fsdp`, `tensor`, in-slice (ICI) and across-slice (DCN).

`mesh.ici` gives each axis's size inside one slice, `mesh.dcn` its factor across slices (the product
of the DCN sizes is the number of slices). Exactly one ICI size may be -1: "the rest of the slice".
Each mesh axis ends up with size `ici * dcn`, DCN outermost, so collectives over an axis whose DCN
factor is 1 never leave a slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


def resolve_axis_sizes(sizes: Mapping[str, int], total: int,
                       what: str = "mesh.ici") -> tuple[int, ...]:
    """Sizes in MESH_AXES order with a single -1 filled so that their product is `total`."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"{what} has unknown axes {unknown}; expected a subset of {MESH_AXES}")
    values = [int(sizes.get(a, 1)) for a in MESH_AXES]
    bad = [(a, v) for a, v in zip(MESH_AXES, values, strict=True) if v == 0 or v < -1]
    if bad:
        raise ValueError(f"{what} sizes {bad} are invalid; expected a positive int or -1")
    if values.count(-1) > 1:
        raise ValueError(f"{what}={dict(sizes)}: at most one axis may be -1")
    known = math.prod(v for v in values if v != -1)
    if -1 in values:
        if total % known:
            raise ValueError(f"{what}={dict(sizes)}: {total} devices are not divisible by the "
                             f"fixed axes' product {known}")
        values[values.index(-1)] = total // known
    if math.prod(values) != total:
        raise ValueError(f"{what}={dict(sizes)} multiplies to {math.prod(values)} but there are "
                         f"{total} devices to place")
    return tuple(values)


def slice_count(dcn: Mapping[str, int]) -> int:
    """Slices a mesh spans: the product of its DCN sizes (a -1 counts as unknown: 1 here)."""
    return math.prod(max(int(v), 1) for v in dcn.values()) if dcn else 1


def num_slices_of(devices: Sequence[Any]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def build_mesh(ici: Mapping[str, int], dcn: Mapping[str, int] | None = None,
               devices: Sequence[Any] | None = None) -> Mesh:
    """A `Mesh` with axes MESH_AXES from in-slice (`ici`) and across-slice (`dcn`) axis sizes
    (the config's `mesh.ici` / `mesh.dcn`).

    `devices` defaults to all global devices; pass compile-only TPU devices
    (`marco_jax.parallel.topologies.topology_devices`) to build a mesh for AOT compilation.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn_cfg = dict(dcn or {})
    dcn = resolve_axis_sizes({a: v for a, v in dcn_cfg.items()}, _dcn_total(dcn_cfg, devices),
                             "mesh.dcn")
    slices = math.prod(dcn)
    if len(devices) % slices:
        raise ValueError(f"mesh.dcn={dcn_cfg} asks for {slices} slices but there are "
                         f"{len(devices)} devices")
    ici = resolve_axis_sizes(dict(ici), len(devices) // slices, "mesh.ici")
    if slices == 1:
        grid = _slice_grid(ici, devices)
    elif hasattr(devices[0], "slice_index"):
        found = num_slices_of(devices)
        if found != slices:
            raise ValueError(f"mesh.dcn={dcn_cfg} asks for {slices} slices; the devices span "
                             f"{found}")
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    allow_split_physical_axes=True)
    else:  # e.g. CPU devices standing in for slices in tests: consecutive blocks are "slices"
        blocks = np.array(devices, dtype=object).reshape(*dcn, *ici)
        n = len(MESH_AXES)
        order = [i for pair in zip(range(n), range(n, 2 * n), strict=True) for i in pair]
        grid = blocks.transpose(order).reshape([d * i for d, i in zip(dcn, ici, strict=True)])
    return Mesh(grid, MESH_AXES)


def _dcn_total(dcn_cfg: Mapping[str, int], devices: Sequence[Any]) -> int:
    """The slice count: the product of the DCN sizes, or the devices' slices when one is -1."""
    if -1 in dcn_cfg.values():
        return num_slices_of(devices)
    return slice_count(dcn_cfg)


def _slice_grid(shape: tuple[int, ...], devices: list[Any]) -> np.ndarray:
    if devices[0].platform == "tpu":
        # Physical-topology aware placement (rings on the torus for each axis).
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return np.array(devices, dtype=object).reshape(shape)

