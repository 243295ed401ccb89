"""One process of a real 2-process jax.distributed CPU run: builds the iterator for
jax.process_index() of jax.process_count(), runs steps, and writes the (all-gathered) state.

    python data_multihost_worker.py CORPUS OUT_DIR PROCESS_ID PORT STEPS
"""

from __future__ import annotations

import json
import sys

import jax
from data_resume_worker import batch_hash, config

from marco_jax.data.pipeline import make_train_iterator


def main() -> None:
    corpus, out_dir, pid, port, steps = sys.argv[1:6]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
    it = make_train_iterator(config(corpus))  # process index/count from jax
    hashes = [batch_hash([next(it)]) for _ in range(int(steps))]
    state = it.get_state()
    with open(f"{out_dir}/host{pid}.json", "w") as f:
        json.dump({"state": state, "hashes": hashes, "rows": list(it.rows)}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
