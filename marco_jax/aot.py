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

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from marco_jax.config.cli import experiment_parser, fail, parse  # noqa: E402
from marco_jax.parallel import slice_count  # noqa: E402
from marco_jax.parallel.topologies import parse_slice  # noqa: E402
from marco_jax.train.aot_fit import DEFAULT_HEADROOM, DEFAULT_MFU, check_fit  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = experiment_parser("python -m marco_jax.aot", __doc__)
    p.add_argument("--topology", default=None, help="gcloud TPU type, e.g. v5p-128, v6e-256")
    p.add_argument("--num_slices", type=int, default=None,
                   help="slices (multi-slice); default: product of mesh.dcn")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help="utilisation assumed for step time and tokens/s")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help="fraction of HBM kept free")
    p.add_argument("--json", default=None, help="also write the report as JSON to this path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse(argv, _parser())
    topology = args.topology or config.topology
    if not topology:
        fail("no --topology and the config names none (config.topology)")
    slices = args.num_slices or slice_count(config.mesh.dcn)
    try:
        tpu_slice = parse_slice(topology, slices)
        report = check_fit(config, tpu_slice, headroom=args.headroom, mfu=args.mfu)
    except (ValueError, RuntimeError) as e:  # bad config/topology, or libtpu missing
        fail(str(e))
    print("\n".join(report.lines()))
    if args.json:
        costed = bool(report.compiled_flops_per_chip)
        derived = ("step_seconds", "tokens_per_second_per_chip", "roofline_flops_per_chip",
                   "roofline_seconds",
                   "roofline_tokens_per_second_per_chip", "model_flops_utilisation_ceiling")
        payload = dataclasses.asdict(report) | {
            "total_bytes": report.total_bytes, "tokens_per_step": report.tokens_per_step,
            "topology": topology} | {k: getattr(report, k) if costed else None for k in derived}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0 if report.fits else 1


if __name__ == "__main__":
    sys.exit(main())
