"""Subprocess for the resume tests: runs the input pipeline as `--hosts` simulated hosts, optionally
restoring a saved state first, and writes the hash of every global batch (and a state).

    python data_resume_worker.py CORPUS OUT.json --hosts 2 --steps 30 [--restore STATE.json]
        [--save-at 30 --state-out STATE.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json

import ml_collections
import numpy as np

from marco_jax.data.packing import FIELDS
from marco_jax.data.pipeline import make_train_iterator, merge_states


def config(corpus: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        mixture="marco_stage1", seq_len=96, global_batch_size=8, seed=1234, temperature=3.0,
        sources_dir=corpus, packing_lookahead=4))
    return c


def batch_hash(parts: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for k in FIELDS:
        h.update(np.ascontiguousarray(np.concatenate([p[k] for p in parts])).tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--restore", default="")
    ap.add_argument("--save-at", type=int, default=-1)
    ap.add_argument("--state-out", default="")
    args = ap.parse_args()
    its = [make_train_iterator(config(args.corpus), h, args.hosts) for h in range(args.hosts)]
    if args.restore:
        with open(args.restore) as f:
            state = json.load(f)
        for it in its:
            it.set_state(state)
    hashes = []
    for step in range(args.steps):
        if step == args.save_at:
            with open(args.state_out, "w") as f:
                json.dump(merge_states([it.get_state() for it in its]), f)
        hashes.append(batch_hash([next(it) for it in its]))
    with open(args.out, "w") as f:
        json.dump(hashes, f)


if __name__ == "__main__":
    main()
