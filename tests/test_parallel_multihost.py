"""Multi-host start-up for real: two processes x two CPU devices join through
initialize_distributed (JAX_COORDINATOR_ADDRESS/...), build one 4-device mesh, init sharded params
and agree with a single-process init."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from marco_jax.model.config import get_preset
from marco_jax.model.qwen2 import init_model

WORKER = Path(__file__).resolve().parent / "parallel_multiprocess_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh JAX processes: ~25 s on two cores
def test_two_processes_form_one_mesh():
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, str(WORKER)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    emb = jax.jit(lambda: nnx.state(init_model(get_preset("tiny", vocab_size=256), 0)))()
    want = float(np.sum(np.asarray(emb["model"]["embed_tokens"]["embedding"].get_value()) ** 2))
    assert sorted(o["process"] for o in outs) == [0, 1]
    for o in outs:
        assert o["joined"] and o["processes"] == 2 and o["devices"] == 4 and o["local"] == 2
        assert o["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
        assert o["local_shards"] == 2
        np.testing.assert_allclose(o["sum_sq"], want, rtol=1e-5)
