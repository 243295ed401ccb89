"""Multi-host start-up: `jax.distributed.initialize` for TPU pods, multi-slice and GPU clusters.

Must run before anything touches a JAX backend. Detection order:
1. explicit arguments or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
   (any GPU/CPU cluster, e.g. launched by hand);
2. a multi-host TPU whose environment says so (GKE: TPU_WORKER_HOSTNAMES lists more than one
   worker; multi-slice: MEGASCALE_COORDINATOR_ADDRESS) or a SLURM / Open MPI job with more than one
   task: JAX discovers coordinator, process count and id from the environment itself;
3. a Cloud TPU VM (JAX's own check at `import jax`: libtpu installed and TPU chips on the PCI bus),
   unless JAX_PLATFORMS leaves TPUs out or TPU_SKIP_MDS_QUERY is set: a gcloud-created slice keeps
   its worker list in the VM metadata server, not in the environment, so `initialize()` is called
   with no arguments and JAX's GCE TPU detection reads it (a single-host slice gives one process);
4. otherwise a single process: nothing to do.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from collections.abc import Mapping

import jax

log = logging.getLogger(__name__)


def on_cloud_tpu_vm() -> bool:
    """True on a Cloud TPU VM: JAX's own verdict (`running_in_cloud_tpu_vm`, set at import from
    the libtpu install and the TPU chips on the PCI bus), else the TPU device files + libtpu."""
    try:
        from jax._src import cloud_tpu_init

        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except (ImportError, AttributeError):  # a JAX that moved the flag
        devices = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
        return bool(devices) and importlib.util.find_spec("libtpu") is not None


def _auto_detectable(env: Mapping[str, str], on_tpu_vm: bool) -> str | None:
    workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w.strip()]
    if len(workers) > 1:
        return f"TPU slice with {len(workers)} workers (TPU_WORKER_HOSTNAMES)"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multi-slice TPU (MEGASCALE_COORDINATOR_ADDRESS)"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"SLURM job with {env['SLURM_NTASKS']} tasks"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return f"Open MPI job with {env['OMPI_COMM_WORLD_SIZE']} ranks"
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if on_tpu_vm and (not platforms or "tpu" in platforms) and "TPU_SKIP_MDS_QUERY" not in env:
        return "Cloud TPU VM (worker list from the metadata server)"
    return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           env: Mapping[str, str] | None = None,
                           on_tpu_vm: bool | None = None) -> bool:
    """Join the multi-process JAX runtime when this is (or may be) a multi-host run. Returns True
    when `jax.distributed.initialize` was called (or had been already), False for a single process.
    `env` / `on_tpu_vm` default to this process's environment and machine."""
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
    reason = _auto_detectable(env, on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm)
    if reason is None:
        return False
    log.info("jax.distributed: auto-detected %s", reason)
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
        raise RuntimeError(
            f"jax.distributed.initialize() failed on a {reason}: {e}. Give "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID explicitly, or (a "
            "single-host TPU VM) set "
            "TPU_SKIP_MDS_QUERY=1 to run as one process") from e
    return True
