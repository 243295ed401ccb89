"""Prove every shipped CPT config fits its TPU slice: compile each train step for its topology with
libtpu's compiler on this machine and print the README table.

    python bench/bench_aot_fit.py [--sizes 0.5b,1.5b,7b,72b] [--mfu 0.4] [--json out.json]

Stage 2 has stage 1's shapes, mesh and batch (only data and LR differ), so stage 1 stands for
both. The 72B compile takes a long time on a small CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from marco_jax.config import load_config_file  # noqa: E402
from marco_jax.parallel.topologies import GIB, parse_slice  # noqa: E402
from marco_jax.train.aot_fit import check_fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str):
    return load_config_file(ROOT / "configs" / f"{name}.py")



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.5b,1.5b,7b,72b")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows, ok = [], True
    for size in args.sizes.split(","):
        name = f"cpt_{size}_stage1"
        config = load_config(name)
        report = check_fit(config, parse_slice(config.topology), mfu=args.mfu)
        print(f"== configs/{name}.py", flush=True)
        print("\n".join(report.lines()), flush=True)
        ok &= report.fits
        rows.append({
            "config": f"cpt_{size}_stage{{1,2}}", "slice": config.topology,
            "mesh": report.mesh, "batch": f"{report.global_batch} x {report.seq_len}",
            "grad_accum": config.optim.grad_accum_steps,
            "remat": config.model.remat_policy,
            "hbm_gib": None if report.error else report.total_bytes / GIB,
            "capacity_gib": report.capacity_bytes / GIB, "fits": report.fits,
            "flops_per_chip": report.compiled_flops_per_chip,
            "tokens_per_s_per_chip": (report.tokens_per_second_per_chip
                                      if report.compiled_flops_per_chip else None),
            "error": report.error})
    print(f"\n| config | slice | mesh | batch (accum) | remat | HBM/chip | fits | FLOPs/step/chip "
          f"| tokens/s/chip at {args.mfu:.0%} MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mesh = "x".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1)
        hbm = "OOM" if r["hbm_gib"] is None else f"{r['hbm_gib']:.1f} / {r['capacity_gib']:.0f} GiB"
        tps = "-" if r["tokens_per_s_per_chip"] is None else f"{r['tokens_per_s_per_chip']:,.0f}"
        flops = "-" if not r["flops_per_chip"] else f"{r['flops_per_chip']:.3g}"
        print(f"| {r['config']} | {r['slice']} | {mesh} | {r['batch']} ({r['grad_accum']}) "
              f"| {r['remat']} | {hbm} | {'yes' if r['fits'] else 'NO'} | {flops} | {tps} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
