"""One process of the 2-process CPU test of multi-host start-up (tests/test_parallel_multihost.py).

Env: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (read by initialize_distributed).
Prints one JSON line: the process's view of the global mesh and a checksum of sharded params.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from marco_jax.model import get_preset, sharded_init_state  # noqa: E402
from marco_jax.parallel import build_mesh, initialize_distributed  # noqa: E402

joined = initialize_distributed()
mesh = build_mesh({"fsdp": -1, "tensor": 2})
_, state = sharded_init_state(get_preset("tiny", vocab_size=256), mesh, seed=0)
emb = state["model"]["embed_tokens"]["embedding"].get_value()
total = float(jax.jit(lambda x: (x * x).sum())(emb))
print(json.dumps({"joined": joined, "process": jax.process_index(),
                  "processes": jax.process_count(), "devices": jax.device_count(),
                  "local": jax.local_device_count(), "mesh": dict(mesh.shape),
                  "local_shards": len(emb.addressable_shards), "sum_sq": total}))
sys.stdout.flush()
