"""`initialize_distributed()`'s decision, driven by environment and machine (no real cluster), and
JAX's own Cloud TPU detection that it defers to on gcloud TPU VMs (metadata server faked)."""

from __future__ import annotations

import sys

import jax
import pytest

from marco_jax.parallel import distributed
from marco_jax.parallel.distributed import initialize_distributed, on_cloud_tpu_vm


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of joining anything."""
    got = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: got.append((a, k)))
    return got


@pytest.mark.parametrize("env,on_tpu_vm,joins", [
    ({}, True, True),  # gcloud TPU VM: worker list only in the metadata server
    ({"JAX_PLATFORMS": "tpu,cpu"}, True, True),
    ({"TPU_SKIP_MDS_QUERY": "1"}, True, False),  # JAX's own "not a GCE TPU" signal
    ({"JAX_PLATFORMS": "cpu"}, True, False),  # a CPU-only job on a TPU VM
    ({}, False, False),  # a workstation / CPU CI box
    ({"TPU_WORKER_HOSTNAMES": "t-0"}, False, False),  # GKE single host
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, False, True),  # GKE multi-host
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, False, True),
    ({"SLURM_NTASKS": "4"}, False, True),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, False, False),
])
def test_auto_detection_calls_initialize_without_arguments(calls, env, on_tpu_vm, joins):
    assert initialize_distributed(env=env, on_tpu_vm=on_tpu_vm) is joins
    assert calls == ([((), {})] if joins else [])


def test_explicit_coordinator_wins_over_detection(calls):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert initialize_distributed(env=env, on_tpu_vm=True) is True
    assert calls == [(("10.0.0.1:1234", 4, 3), {})]


def test_failed_tpu_detection_is_a_clear_error(monkeypatch):
    def fail():
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", fail)
    with pytest.raises(RuntimeError, match=r"Cloud TPU VM .*coordinator_address should be "
                                           r"defined.*TPU_SKIP_MDS_QUERY=1"):
        initialize_distributed(env={}, on_tpu_vm=True)


def test_this_cpu_machine_is_no_tpu_vm_and_stays_single_process(calls, monkeypatch):
    assert on_cloud_tpu_vm() is False  # libtpu is installed here (AOT), but there are no chips
    assert initialize_distributed(env={}) is False and calls == []


def test_fallback_check_when_jax_moves_its_flag(monkeypatch):
    import jax._src

    monkeypatch.delattr(jax._src, "cloud_tpu_init")
    monkeypatch.setitem(sys.modules, "jax._src.cloud_tpu_init", None)  # import now fails
    assert on_cloud_tpu_vm() is False  # no TPU device files here
    monkeypatch.setattr(distributed.glob, "glob",
                        lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
    assert on_cloud_tpu_vm() is True  # device files + libtpu (installed in this venv)


def test_jax_reads_a_gcloud_slice_from_the_metadata_server(monkeypatch):
    """The premise of the TPU VM rule, on jax's own code: with no TPU variables in the environment
    and a metadata server describing worker 2 of a 4-host slice, JAX's cluster detection finds 4
    processes, id 2, coordinator = worker 0."""
    from jax._src import clusters
    from jax._src.clusters import cloud_tpu_cluster

    metadata = {"agent-worker-number": "2", "tpu-env": "ACCELERATOR_TYPE: 'v5p-32'\n",
                "worker-network-endpoints": "10.1.0.5,10.1.0.6,10.1.0.7,10.1.0.8"}
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: (metadata[key], 200))
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    for var in ("TPU_SKIP_MDS_QUERY", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
                "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "PMIX_SERVER_URI", "JAX_COORDINATOR_PORT"):
        monkeypatch.delenv(var, raising=False)
    address, count, pid, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10)
    assert (address, count, pid) == ("10.1.0.5:8482", 4, 2)
    assert distributed._auto_detectable({}, on_tpu_vm=True) is not None
