"""Multi-host start-up: `jax.distributed.initialize` for TPU pods, multi-slice and GPU clusters.

Must run before anything touches a JAX backend. Detection order:
1. explicit arguments or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
   (any GPU/CPU cluster, e.g. launched by gcp/ scripts or by hand);
2. a multi-host Cloud TPU VM (TPU_WORKER_HOSTNAMES lists more than one worker, or multi-slice
   MEGASCALE_COORDINATOR_ADDRESS is set) or a SLURM / Open MPI job with more than one task: JAX
   discovers coordinator, process count and id from the environment itself;
3. otherwise a single process: nothing to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax

log = logging.getLogger(__name__)


def _auto_detectable(env: Mapping[str, str]) -> str | None:
    workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w.strip()]
    if len(workers) > 1:
        return f"Cloud TPU VM with {len(workers)} workers"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multi-slice TPU (MEGASCALE_COORDINATOR_ADDRESS)"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"SLURM job with {env['SLURM_NTASKS']} tasks"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return f"Open MPI job with {env['OMPI_COMM_WORLD_SIZE']} ranks"
    return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           env: Mapping[str, str] | None = None) -> bool:
    """Join the multi-process JAX runtime when this is a multi-host run. Returns True when
    `jax.distributed.initialize` was called (or had been already), False for a single process."""
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(f"coordinator {coordinator_address!r} given without num_processes/"
                             "process_id (set JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
        log.info("jax.distributed: coordinator %s, process %d of %d", coordinator_address,
                 process_id, num_processes)
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    reason = _auto_detectable(env)
    if reason is None:
        return False
    log.info("jax.distributed: auto-detected %s", reason)
    jax.distributed.initialize()
    return True
