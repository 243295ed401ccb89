"""Compile a config's train step for a TPU slice on this machine and check that it fits.

    python -m marco_jax.aot --config configs/cpt_7b_stage1.py --topology v5p-128 [--mfu 0.4]

Prints per-chip HBM (arguments, outputs, temporaries, total vs capacity and margin), compiled
FLOPs per step, tokens per step, and the step time and tokens/s/chip at the stated MFU.
Exit status: 0 fits, 1 does not fit (or the compiler ran out of memory), 2 bad input.
`--topology` defaults to the config's `topology`; the slice count to the product of `mesh.dcn`.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices; never grab a local TPU

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from marco_jax.parallel.aot_fit import DEFAULT_HEADROOM, DEFAULT_MFU, check_fit  # noqa: E402
from marco_jax.parallel.topologies import parse_slice  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "gcloud TPU type, e.g. v5p-128, v6e-256")
_NUM_SLICES = flags.DEFINE_integer("num_slices", None, "slices (multi-slice); default: "
                                   "product of mesh.dcn")
_MFU = flags.DEFINE_float("mfu", DEFAULT_MFU, "utilisation assumed for step time and tokens/s")
_HEADROOM = flags.DEFINE_float("headroom", DEFAULT_HEADROOM, "fraction of HBM kept free")
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this path")


def main(argv: list[str]) -> int:
    del argv
    config = _CONFIG.value
    if config is None:
        print("error: --config is required", file=sys.stderr)
        return 2
    topology = _TOPOLOGY.value or config.get("topology", "")
    if not topology:
        print("error: no --topology and the config names none (config.topology)",
              file=sys.stderr)
        return 2
    slices = _NUM_SLICES.value or math.prod(int(v) for v in config.mesh.get("dcn", {}).values())
    try:
        tpu_slice = parse_slice(topology, slices)
        report = check_fit(config, tpu_slice, headroom=_HEADROOM.value, mfu=_MFU.value)
    except (ValueError, RuntimeError) as e:  # bad config/topology, or libtpu missing
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    if _JSON.value:
        payload = dataclasses.asdict(report) | {
            "total_bytes": report.total_bytes, "tokens_per_step": report.tokens_per_step,
            "step_seconds": report.step_seconds if report.compiled_flops_per_chip else None,
            "tokens_per_second_per_chip": (report.tokens_per_second_per_chip
                                           if report.compiled_flops_per_chip else None),
            "topology": topology}
        with open(_JSON.value, "w") as f:
            json.dump(payload, f, indent=2)
    return 0 if report.fits else 1


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
