"""The partition spec of every parameter of the shipped 7B config, on the mesh its topology gives,
against a reviewed golden file. Regenerate after an intended rules change with
MARCO_UPDATE_GOLDEN=1 pytest tests/test_parallel_golden.py (and review the diff)."""

import json
import os
from pathlib import Path

import jax
from flax import nnx

from marco_jax.config import load_config_file
from marco_jax.model import abstract_model, from_experiment
from marco_jax.parallel import logical_to_spec, resolve_axis_sizes, slice_count
from marco_jax.parallel.mesh import MESH_AXES
from marco_jax.parallel.topologies import parse_slice

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "cpt_7b_stage1_partition_specs.json"


def _load(name: str):
    return load_config_file(ROOT / "configs" / f"{name}.py")


def _specs(config) -> dict:
    chips = parse_slice(config.topology).chips
    slices = slice_count(config.mesh.dcn)
    ici = resolve_axis_sizes(dict(config.mesh.ici), chips // slices)
    dcn = resolve_axis_sizes(dict(config.mesh.dcn), slices, "mesh.dcn")
    mesh = jax.sharding.AbstractMesh(tuple(i * d for i, d in zip(ici, dcn, strict=True)),
                                     MESH_AXES)
    out = {"topology": config.topology, "mesh": dict(mesh.shape), "params": {}}
    for path, var in nnx.to_flat_state(abstract_model(from_experiment(config.model))[1]):
        axes = var.get_metadata()["logical_axes"]
        spec = logical_to_spec(axes, var.get_value().shape, mesh)
        out["params"]["/".join(map(str, path))] = {
            "shape": list(var.get_value().shape), "logical_axes": list(axes),
            "spec": [list(e) if isinstance(e, tuple) else e for e in spec]}
    return out


def test_7b_partition_specs_match_golden():
    got = _specs(_load("cpt_7b_stage1"))
    if os.environ.get("MARCO_UPDATE_GOLDEN"):
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in got["params"].items()]
        GOLDEN.write_text(f'{{"topology": {json.dumps(got["topology"])}, '
                          f'"mesh": {json.dumps(got["mesh"])},\n "params": {{\n'
                          + ",\n".join(lines) + "\n }\n}\n")
    want = json.loads(GOLDEN.read_text())
    assert got["mesh"] == want["mesh"] and got["topology"] == want["topology"]
    assert sorted(got["params"]) == sorted(want["params"])
    for name, entry in want["params"].items():
        assert got["params"][name] == entry, name
