"""The Cloud TPU launcher (gcp/tpu.py): the gcloud commands it prints for the paper's CPT configs,
their shell quoting (parsed back with shlex, and the remote scripts run by bash), and its errors."""

import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marco_jax.config import apply_overrides
from marco_jax.config.cli import experiment_parser, parse

REPO = Path(__file__).resolve().parents[1]


def _load_launcher():
    """gcp/ is a directory of scripts run from the repository root, not an installed package."""
    spec = importlib.util.spec_from_file_location("gcp_tpu", REPO / "gcp" / "tpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tpu = _load_launcher()
STAGE1, STAGE2 = "configs/cpt_7b_stage1.py", "configs/cpt_7b_stage2.py"
WHERE = ["--name", "marco-7b", "--zone", "us-east5-a", "--project", "proj"]


def dry_run(capsys, *argv: str) -> list[list[str]]:
    assert tpu.main([argv[0], *WHERE, "--dry-run", *argv[1:]]) == 0
    out = capsys.readouterr()
    dry_run.stderr = out.err
    return [shlex.split(line) for line in out.out.splitlines()]


def flags_of(cmd: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def remote_script(cmd: list[str]) -> str:
    (script,) = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
    return script


def trainer_argv(ssh: list[str]) -> list[str]:
    """The argv of the python that `train` starts on each worker, unwrapped from the ssh command
    and the nohup bash -c it is detached with."""
    words = shlex.split(remote_script(ssh))
    inner = shlex.split(words[words.index("-c", words.index("nohup")) + 1])
    return inner[inner.index("~/marco-venv/bin/python") + 1:]


def test_create_takes_the_accelerator_type_from_the_config(capsys):
    (cmd,) = dry_run(capsys, "create", "--config", STAGE1, "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "marco-7b"]
    f = flags_of(cmd)
    assert f["accelerator-type"] == "v5p-128"  # configs/cpt_recipe.py SIZES["7b"]
    assert f["runtime-version"] == "v2-alpha-tpuv5"
    assert f["node-id"] == "marco-7b" and "node-count" not in f
    assert f["zone"] == "us-east5-a" and f["project"] == "proj"
    assert "--spot" in cmd and "--reserved" not in cmd
    assert "64 chips" in dry_run.stderr and "16 worker(s) per slice" in dry_run.stderr


def test_multislice_from_mesh_dcn_uses_node_count():
    config = apply_overrides(tpu.load_config(REPO / STAGE1), [("mesh.dcn.data", "2")])
    # two v5p-128 slices, data parallel across them
    s = tpu.tpu_slice(config)
    assert (s.name, s.num_slices, s.chips) == ("v5p-128", 2, 128)
    cmd = tpu.create_command(tpu.Target("m", "z"), s, tpu.runtime_version(s), "best-effort")
    assert cmd[:2] == ["gcloud", "alpha"]  # --best-effort exists only in gcloud alpha
    f = flags_of(cmd)
    assert f["node-count"] == "2" and f["node-prefix"] == "m" and "node-id" not in f
    assert "--best-effort" in cmd
    with pytest.raises(ValueError, match="multi-slice needs a queued resource"):
        tpu.create_command(tpu.Target("m", "z", queued=False), s, "v2-alpha-tpuv5")


def test_tpu_vm_create_and_ssh_use_the_node_api(capsys):
    (cmd,) = dry_run(capsys, "create", "--tpu-vm", "--accelerator-type", "v4-32", "--reserved")
    assert cmd[3:5] == ["tpu-vm", "create"]
    f = flags_of(cmd)
    assert f["version"] == "tpu-ubuntu2204-base" and f["accelerator-type"] == "v4-32"
    assert "--reserved" in cmd
    (ssh,) = dry_run(capsys, "stop", "--tpu-vm")
    assert ssh[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in ssh
    assert not any(a.startswith("--node") for a in ssh)


@pytest.mark.parametrize("argv, message", [
    (["--accelerator-type", "v5p-100"], "no standard v5p slice of 50 chips"),
    (["--accelerator-type", "tpu7-64"], "expected a gcloud accelerator type"),
    (["--accelerator-type", "v5p-128", "--num-slices", "0"], "expected >= 1"),
])
def test_invalid_topology_is_a_clear_error(capsys, argv, message):
    assert tpu.main(["create", *argv, *WHERE, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and argv[1] in err


def test_config_without_topology_is_a_clear_error():
    config = tpu.load_config(REPO / "configs" / "demo.py").replace(topology="")
    with pytest.raises(ValueError, match=r"demo.py: config.topology is empty.*--accelerator-type"):
        tpu.tpu_slice(config, config_path="configs/demo.py")


def test_train_runs_on_every_worker_with_the_config_and_workdir(capsys, monkeypatch):
    (ssh,) = dry_run(capsys, "train", "--config", STAGE1, "--bucket", "gs://bkt",
                     "--", "--config.train.steps=20")
    assert ssh[3:6] == ["queued-resources", "ssh", "marco-7b"]
    assert "--worker=all" in ssh and "--node=all" in ssh
    argv = trainer_argv(ssh)
    # the trainer itself joins jax.distributed (initialize_distributed: Cloud TPU VM rule)
    assert argv[:3] == ["-m", "marco_jax.train", "--config"]
    assert argv[3] == STAGE1
    assert argv[argv.index("--workdir") + 1] == "gs://bkt/marco/runs/cpt_7b_stage1"
    words = shlex.split(remote_script(ssh))
    inner = shlex.split(words[words.index("nohup") + 3])
    assert inner[inner.index("env") + 1] == "JAX_PLATFORMS=tpu"  # no silent fallback to CPU
    # the trainer's own flag parser accepts the arguments and they reach the config
    monkeypatch.chdir(REPO)
    parser = experiment_parser("train", None)
    parser.add_argument("--workdir")
    config, args = parse(argv[2:], parser)
    assert config.train.init_from == "gs://bkt/marco/qwen2-7b"
    assert config.data.sources_dir == "gs://bkt/marco/shards"
    assert config.train.steps == 20 and args.workdir == "gs://bkt/marco/runs/cpt_7b_stage1"


def test_stage2_starts_from_stage1_workdir(capsys):
    (s1,) = dry_run(capsys, "train", "--config", STAGE1, "--bucket", "gs://bkt")
    (s2,) = dry_run(capsys, "train", "--config", STAGE2, "--bucket", "gs://bkt")
    a1, a2 = trainer_argv(s1), trainer_argv(s2)
    workdir1 = a1[a1.index("--workdir") + 1]
    assert f"--config.train.init_from={workdir1}" in a2
    assert a2[a2.index("--workdir") + 1] == "gs://bkt/marco/runs/cpt_7b_stage2"


def test_user_overrides_win_and_survive_quoting(capsys):
    tricky = "gs://bkt/it's a \"dir\" $HOME;rm -rf x"
    (ssh,) = dry_run(capsys, "train", "--config", STAGE2, "--bucket", "gs://bkt",
                     "--workdir", "gs://bkt/run two", "--", f"--config.train.init_from={tricky}")
    argv = trainer_argv(ssh)
    assert argv[argv.index("--workdir") + 1] == "gs://bkt/run two"
    assert [a for a in argv if a.startswith("--config.train.init_from")] == [
        f"--config.train.init_from={tricky}"]


@pytest.mark.parametrize("argv, message", [
    ([], "placeholder paths"),  # configs/cpt_recipe.py ships gs://YOUR_BUCKET
    (["--bucket", "/local/dir"], "expected a gs:// URL"),
    (["--bucket", "gs://b", "--workdir", "/tmp/run"], "needs a gs:// workdir"),
    (["--bucket", "gs://b", "--remote-dir", "../x"], "--remote-dir='../x'"),
    (["--bucket", "gs://b", "--", "--steps=3"], "--config.<key>=<value>"),
    (["--bucket", "gs://b", "--env", "no-equals"], "expected NAME=VALUE"),
])
def test_train_refuses_bad_paths(capsys, argv, message):
    assert tpu.main(["train", "--config", STAGE1, *WHERE, "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_setup_ships_the_repo_and_installs_the_tpu_extra(capsys):
    archive, scp, ssh = dry_run(capsys, "setup")
    assert archive[:2] == ["git", "-C"] and "archive" in archive and archive[-1] == "HEAD"
    assert scp[3:5] == ["queued-resources", "scp"] and scp[5] == archive[archive.index("-o") + 1]
    assert "--worker=all" in scp and "--node=all" in scp
    words = shlex.split(remote_script(ssh))
    assert "./marco_jax[tpu]" in words and "python3.11" in words
    assert subprocess.run(["bash", "-n", "-c", remote_script(ssh)]).returncode == 0
    (clone,) = dry_run(capsys, "setup", "--repo-url", "https://example.com/m.git", "--ref", "v1")
    assert "https://example.com/m.git" in shlex.split(remote_script(clone))


def alive(pid: int) -> bool:
    """Running and not a zombie (an unreaped child of a container's init still answers kill -0)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_detached_train_script_runs_refuses_a_second_start_and_stops(tmp_path):
    """The remote scripts, run by bash in a fake home whose venv python records its argv."""
    fake = tmp_path / "marco-venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$JAX_PLATFORMS" "$@" > "$HOME/argv.txt"\n'
                    "exec sleep 60\n")
    fake.chmod(0o755)
    (tmp_path / "marco_jax").mkdir()
    argv = tpu.trainer_argv(STAGE1, "gs://b/w", [], ["--config.data.mixture=it's $X"])
    script = tpu.train_script(tpu.Remote(), argv, ["JAX_PLATFORMS=tpu"])
    env = {**os.environ, "HOME": str(tmp_path)}
    sh = lambda s: subprocess.run(["bash", "-c", s], env=env, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=30)
    first = sh(script)
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "marco_logs" / "train.pid").read_text())
    try:
        for _ in range(100):
            if (tmp_path / "argv.txt").exists():
                break
            time.sleep(0.05)
        assert (tmp_path / "argv.txt").read_text().splitlines() == ["tpu", *argv]
        second = sh(script)
        assert second.returncode == 1 and "a run is going" in second.stderr
        setup = sh(tpu.setup_script(tpu.Remote()))  # would replace the running tree
        assert setup.returncode == 1 and "a run is going" in setup.stderr
        assert (tmp_path / "marco_jax").is_dir()
        assert "SIGTERM sent" in sh(tpu.stop_script()).stdout
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the trainer did not stop on SIGTERM")
    finally:
        subprocess.run(["kill", "-9", str(pid)], capture_output=True)


def test_missing_gcloud_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tpu.main(["status", *WHERE]) == 127
    captured = capsys.readouterr()
    assert "gcloud is not on PATH" in captured.err
    assert captured.out.startswith("gcloud compute tpus queued-resources describe marco-7b")


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "gcp.tpu", "delete", *WHERE, "--yes", "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert shlex.split(out) == ["gcloud", "compute", "tpus", "queued-resources", "delete",
                                "marco-7b", "--zone=us-east5-a", "--project=proj", "--force",
                                "--quiet"]
