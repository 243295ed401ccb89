"""Cloud TPU launcher: create a slice, install this repository on it, train, watch, delete.

  python -m gcp.tpu create --name marco-7b --zone us-east5-a --config configs/cpt_7b_stage1.py \
      [--spot | --best-effort | --reserved] [--tpu-vm] [--dry-run]
  python -m gcp.tpu setup  --name marco-7b --zone us-east5-a [--repo-url URL --ref main]
  python -m gcp.tpu train  --name marco-7b --zone us-east5-a --config configs/cpt_7b_stage1.py \
      --bucket gs://my-bucket [--workdir gs://...] [--foreground] [-- --config.key=value ...]
  python -m gcp.tpu status|logs|stop|delete --name marco-7b --zone us-east5-a

Every subcommand prints the exact commands it runs (shell-quoted); `--dry-run` prints them and
runs nothing. The accelerator type comes from the config's `topology` and the slice count from the
product of its `mesh.dcn` sizes (override with --accelerator-type / --num-slices). By default the
slice is a queued resource (`gcloud compute tpus queued-resources`, required for multi-slice,
`--node-count`); `--tpu-vm` uses the direct Create Node API (`gcloud compute tpus tpu-vm`).

`train` starts `python -m marco_jax.train` on every worker (`--worker=all`, and `--node=all` for a
queued resource), detached with nohup (log and pid in ~/marco_logs/ on each worker) so that a
dropped ssh connection does not kill the run; `--foreground` streams the output instead. The
trainer's `marco_jax.parallel.initialize_distributed()` recognises a Cloud TPU VM and calls
`jax.distributed.initialize()`, whose Cloud TPU detection reads the worker list and the
multi-slice ids from the TPU VM metadata server (a gcloud-created slice does not export them to the
shell environment). Extra arguments after `--` go to the trainer (`train`) or to gcloud (`create`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO / "build" / "tpu" / "marco_jax.tar.gz"
PLACEHOLDER = "gs://YOUR_BUCKET"  # the bucket configs/cpt_recipe.py ships with
LOG_DIR = "marco_logs"  # on each worker, relative to the home directory

# Runtime (software) versions, per generation (gcloud's accelerator-type prefix): the images Cloud
# TPU's docs give for JAX on each generation. Override with --runtime-version.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# The trainer's path settings that the recipe leaves on the placeholder bucket.
PATH_KEYS = ("train.init_from", "data.sources_dir")
_SAFE_REMOTE_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice by name: a queued resource (its node ids: the name, or name-0..N-1 when multi-slice)
    or, with queued=False, a TPU VM made by the Create Node API."""

    name: str
    zone: str
    project: str = ""
    queued: bool = True

    def gcloud(self, verb: str, track: str = "") -> list[str]:
        group = "queued-resources" if self.queued else "tpu-vm"
        return ["gcloud", *([track] if track else []), "compute", "tpus", group, verb]

    def location(self) -> list[str]:
        return [f"--zone={self.zone}", *([f"--project={self.project}"] if self.project else [])]

    def workers(self, which: str = "all") -> list[str]:
        """Every worker of every slice ('all'), or worker `which` of the first slice."""
        return [f"--worker={which}", *([f"--node={which}"] if self.queued else [])]


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where setup puts things on each worker, relative to the login user's home directory."""

    repo_dir: str = "marco_jax"
    venv: str = "marco-venv"
    python: str = "python3.11"  # pyproject wants 3.11; TPU VM images ship Ubuntu 22.04's 3.10

    def __post_init__(self) -> None:
        for field, value in (("--remote-dir", self.repo_dir), ("--venv", self.venv)):
            if not _SAFE_REMOTE_PATH.fullmatch(value) or ".." in value.split("/"):
                raise ValueError(f"{field}={value!r}: expected a relative path under the home "
                                 "directory (letters, digits, . _ - and /, no '..')")

    @property
    def venv_python(self) -> str:
        return f"~/{self.venv}/bin/python"


# ---------------------------------------------------------------------------------------------
# What to run on the slice: accelerator type, slice count, run paths from a config file


def load_config(path: str) -> Any:
    from marco_jax.config import load_config_file

    return load_config_file(path)


def tpu_slice(config: Any | None, accelerator_type: str | None = None,
              num_slices: int | None = None, config_path: str = "config") -> Any:
    """The TpuSlice to create: --accelerator-type or the config's `topology`; --num-slices or the
    product of the config's mesh.dcn sizes (1 without a config)."""
    from marco_jax.parallel import slice_count
    from marco_jax.parallel.topologies import parse_slice

    name = accelerator_type or (config.topology if config is not None else "")
    if not name:
        raise ValueError(f"{config_path}: config.topology is empty and no --accelerator-type "
                         "was given; expected a gcloud TPU type like v5p-128")
    if num_slices is None:
        num_slices = slice_count(config.mesh.dcn) if config is not None else 1
    where = f"--accelerator-type={name}" if accelerator_type else f"{config_path}: topology"
    try:
        return parse_slice(name, num_slices)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def runtime_version(tpu: Any, override: str | None = None) -> str:
    return override or RUNTIME_VERSIONS[tpu.chip.generation]


def hosts_per_slice(tpu: Any) -> int:
    """TPU VM workers per slice: 4 chips a host, except single-host slices (up to 8 chips on
    v5e/v6e, 4 on v4/v5p)."""
    single_host_max = 8 if tpu.chip.dims == 2 else 4
    return 1 if tpu.chips_per_slice <= single_host_max else tpu.chips_per_slice // 4


def override_keys(overrides: Sequence[str]) -> set[str]:
    """Config keys set by `--config.<key>=<value>` / `--config.<key> <value>` arguments."""
    return {a[len("--config."):].split("=", 1)[0] for a in overrides if a.startswith("--config.")}


def run_paths(config: Any, bucket: str | None, workdir: str | None,
              overrides: Sequence[str] = (), config_path: str = "config") -> tuple[str, list[str]]:
    """The run's workdir and the `--config.*` path overrides that point the recipe's placeholder
    bucket (gs://YOUR_BUCKET) at `bucket`. Raises when a path would stay on the placeholder or
    the workdir is not on gs:// (every host must see the same checkpoints)."""
    if bucket is not None and not bucket.startswith("gs://"):
        raise ValueError(f"--bucket={bucket!r}: expected a gs:// URL like gs://my-bucket")

    def resolve(value: str) -> str:
        if bucket and value.startswith(PLACEHOLDER):
            return bucket.rstrip("/") + value[len(PLACEHOLDER):]
        return value

    workdir = workdir or resolve(config.train.workdir)
    if not workdir:
        raise ValueError(f"{config_path}: no train.workdir; pass --workdir gs://...")
    if not workdir.startswith("gs://"):
        raise ValueError(f"workdir {workdir!r}: a multi-host run needs a gs:// workdir that every "
                         "worker reads and writes (checkpoints, metrics)")
    given = override_keys(overrides)
    extra, unresolved = [], []
    for key in PATH_KEYS:
        if key in given:
            continue
        section, field = key.split(".")
        value = str(getattr(getattr(config, section), field))
        new = resolve(value)
        if new != value:
            extra.append(f"--config.{key}={new}")
        if "YOUR_BUCKET" in new:
            unresolved.append(f"{key}={new}")
    if "YOUR_BUCKET" in workdir:
        unresolved.append(f"workdir={workdir}")
    if unresolved:
        raise ValueError(f"{config_path}: placeholder paths {unresolved}; pass --bucket gs://... "
                         "(replaces gs://YOUR_BUCKET), --workdir, or --config.<key>=... after --")
    return workdir, extra


def repo_relative(path: str) -> str:
    """A config path as the workers see it: relative to the repository root."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        raise ValueError(f"--config {path}: must be inside the repository ({REPO}), which is what "
                         "setup copies to the workers") from None


# ---------------------------------------------------------------------------------------------
# The gcloud commands


def create_command(target: Target, tpu: Any, runtime: str, provisioning: str = "",
                   extra: Sequence[str] = ()) -> list[str]:
    """provisioning: '' (on demand), 'spot', 'best-effort' (queued resources, gcloud alpha only)
    or 'reserved'."""
    if provisioning not in ("", "spot", "best-effort", "reserved"):
        raise ValueError(f"provisioning={provisioning!r}: expected spot, best-effort or reserved")
    if not target.queued and (tpu.num_slices > 1 or provisioning == "best-effort"):
        what = "multi-slice" if tpu.num_slices > 1 else "--best-effort"
        raise ValueError(f"{what} needs a queued resource; drop --tpu-vm")
    track = "alpha" if provisioning == "best-effort" else ""
    cmd = [*target.gcloud("create", track), target.name, *target.location(),
           f"--accelerator-type={tpu.name}"]
    if target.queued:
        cmd.append(f"--runtime-version={runtime}")
        cmd += ([f"--node-count={tpu.num_slices}", f"--node-prefix={target.name}"]
                if tpu.num_slices > 1 else [f"--node-id={target.name}"])
    else:
        cmd.append(f"--version={runtime}")
    if provisioning:
        cmd.append(f"--{provisioning}")
    return cmd + list(extra)


def ssh_command(target: Target, remote: str, which: str = "all") -> list[str]:
    return [*target.gcloud("ssh"), target.name, *target.location(), *target.workers(which),
            f"--command={remote}"]


def scp_command(target: Target, local: Path, remote_path: str) -> list[str]:
    return [*target.gcloud("scp"), str(local), f"{target.name}:{remote_path}",
            *target.location(), *target.workers()]


def status_command(target: Target) -> list[str]:
    return [*target.gcloud("describe"), target.name, *target.location()]


def delete_command(target: Target, yes: bool = False) -> list[str]:
    # --force: a queued resource that holds nodes is deleted with them
    return [*target.gcloud("delete"), target.name, *target.location(),
            *(["--force"] if target.queued else []), *(["--quiet"] if yes else [])]


def archive_command(ref: str = "HEAD") -> list[str]:
    """The committed tree at `ref` as a tarball (uncommitted edits are not shipped)."""
    return ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", str(ARCHIVE), ref]


def setup_script(remote: Remote, repo_url: str = "", ref: str = "HEAD") -> str:
    """Runs on every worker: unpack (or clone) the repository, make a Python 3.11 venv, install
    the package with the `tpu` extra (jax[tpu]: libtpu from PyPI)."""
    d, q = remote.repo_dir, shlex.quote
    if repo_url:
        fetch = (f"rm -rf {d} && git clone {q(repo_url)} {d} && "
                 f"git -C {d} checkout {q(ref)}")
    else:
        fetch = (f"rm -rf {d} && mkdir -p {d} && tar -xzf {ARCHIVE.name} -C {d} && "
                 f"rm {ARCHIVE.name}")
    py = q(remote.python)
    install_python = (f"{{ command -v {py} >/dev/null || {{ sudo apt-get update -qq && "
                      f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {py} "
                      f"{py}-venv; }}; }}")
    vpy = remote.venv_python
    steps = [
        refuse_while_running(),  # the running trainer imports from the tree replaced below
        fetch,
        install_python,
        f"{{ test -x {vpy} || {py} -m venv ~/{remote.venv}; }}",
        f"{vpy} -m pip install -q --upgrade pip",
        f"{vpy} -m pip install -q -e {q(f'./{d}[tpu]')}",
        f"{vpy} -c {q('import jax, marco_jax; print(marco_jax.__file__, jax.__version__)')}",
    ]
    return " && ".join(steps)


def trainer_argv(config_rel: str, workdir: str, path_overrides: Sequence[str],
                 overrides: Sequence[str]) -> list[str]:
    """What each worker runs, from the repository root."""
    return ["-m", "marco_jax.train", "--config", config_rel, "--workdir", workdir,
            *path_overrides, *overrides]


def refuse_while_running() -> str:
    """Shell test that fails (exit 1) on a worker whose detached trainer is still alive."""
    pid = f"~/{LOG_DIR}/train.pid"
    return (f"if test -f {pid} && kill -0 \"$(cat {pid})\" 2>/dev/null; then "
            f"echo \"$(hostname): a run is going (pid $(cat {pid})); python -m gcp.tpu stop "
            f"first\" >&2; exit 1; fi")


def train_script(remote: Remote, argv: Sequence[str], env: Sequence[str] = (),
                 foreground: bool = False) -> str:
    """Runs on every worker: the trainer from the repository root, either in the ssh session or
    detached (nohup; log and pid under ~/marco_logs, a second start refused while it runs)."""
    run = (f"cd {remote.repo_dir} && exec env {shlex.join(env)} {remote.venv_python} "
           f"{shlex.join(argv)}")
    if foreground:
        return run
    log, pid = f"~/{LOG_DIR}/train.log", f"~/{LOG_DIR}/train.pid"
    return (f"mkdir -p ~/{LOG_DIR} && {refuse_while_running()} && "
            f"echo \"== $(date -u +%FT%TZ) start\" >> {log} && "
            f"{{ nohup bash -c {shlex.quote(run)} >> {log} 2>&1 < /dev/null & }} && "
            f"echo $! > {pid} && echo \"$(hostname): started pid $!, log {log}\"")


def logs_script(lines: int = 200, follow: bool = True) -> str:
    return f"tail -n {int(lines)} {'-F ' if follow else ''}~/{LOG_DIR}/train.log"


def stop_script() -> str:
    """SIGTERM the trainer (it saves a checkpoint, then exits 0)."""
    pid = f"~/{LOG_DIR}/train.pid"
    return (f"if test -f {pid} && kill -TERM \"$(cat {pid})\" 2>/dev/null; then "
            f"echo \"$(hostname): SIGTERM sent to $(cat {pid})\"; "
            f"else echo \"$(hostname): no run\"; fi")


def parse_env(pairs: Sequence[str]) -> list[str]:
    for p in pairs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", p):
            raise ValueError(f"--env {p!r}: expected NAME=VALUE")
    return list(pairs)


# ---------------------------------------------------------------------------------------------
# CLI


def _run(commands: list[list[str]], dry_run: bool) -> int:
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    if any(c[0] == "gcloud" for c in commands) and shutil.which("gcloud") is None:
        print("error: gcloud is not on PATH; install the Google Cloud CLI "
              "(https://cloud.google.com/sdk/docs/install) or use --dry-run to see the commands",
              file=sys.stderr)
        return 127
    for cmd in commands:
        if cmd[:2] == ["git", "-C"]:
            ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
        rc = subprocess.call(cmd)
        if rc:
            print(f"error: exit status {rc} from: {shlex.join(cmd)}", file=sys.stderr)
            return rc
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gcp.tpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="queued resource / TPU VM name")
    common.add_argument("--zone", required=True, help="e.g. us-east5-a (v5p), us-central2-b (v4)")
    common.add_argument("--project", default="", help="default: gcloud's configured project")
    common.add_argument("--tpu-vm", action="store_true", dest="tpu_vm",
                        help="a TPU VM from the Create Node API instead of a queued resource")
    common.add_argument("--dry-run", action="store_true", dest="dry_run",
                        help="print the commands, run nothing")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--remote-dir", default=Remote.repo_dir,
                        help="repository copy on each worker, under ~ (default %(default)s)")
    remote.add_argument("--venv", default=Remote.venv, help="venv under ~ (default %(default)s)")

    create = sub.add_parser("create", parents=[common], help="create the slice")
    create.add_argument("--config", help="experiment config: topology and mesh.dcn give the "
                        "accelerator type and slice count")
    create.add_argument("--accelerator-type", dest="accelerator_type", help="e.g. v5p-128")
    create.add_argument("--num-slices", dest="num_slices", type=int,
                        help="slices (multi-slice, --node-count); default: product of mesh.dcn")
    create.add_argument("--runtime-version", dest="runtime_version",
                        help=f"default per generation: {RUNTIME_VERSIONS}")
    prov = create.add_mutually_exclusive_group()
    prov.add_argument("--spot", action="store_const", const="spot", dest="provisioning")
    prov.add_argument("--best-effort", action="store_const", const="best-effort",
                      dest="provisioning", help="queued resources only, via gcloud alpha")
    prov.add_argument("--reserved", action="store_const", const="reserved", dest="provisioning")

    setup = sub.add_parser("setup", parents=[common, remote],
                           help="copy the repository to every worker and install it")
    setup.add_argument("--repo-url", dest="repo_url", default="",
                       help="git clone this on the workers instead of copying the local tree")
    setup.add_argument("--ref", default="HEAD", help="commit/branch/tag to ship (default HEAD)")
    setup.add_argument("--python", default=Remote.python,
                       help="interpreter for the venv (default %(default)s, apt-installed if "
                       "missing)")

    train = sub.add_parser("train", parents=[common, remote],
                           help="run python -m marco_jax.train on every worker")
    train.add_argument("--config", required=True, help="configs/<x>.py (inside the repository)")
    train.add_argument("--bucket", help="gs://bucket replacing the recipe's gs://YOUR_BUCKET")
    train.add_argument("--workdir", help="gs:// workdir (default: the config's train.workdir)")
    train.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="extra environment for the trainer (repeatable), e.g. "
                       "LIBTPU_INIT_ARGS=... or JAX_COMPILATION_CACHE_DIR=gs://...")
    train.add_argument("--foreground", action="store_true",
                       help="stream the output over ssh instead of running detached")

    for verb, text in (("status", "describe the slice"), ("delete", "delete the slice"),
                       ("logs", "tail worker 0's training log"),
                       ("stop", "SIGTERM the trainer on every worker (it checkpoints first)")):
        p = sub.add_parser(verb, parents=[common], help=text)
        if verb == "delete":
            p.add_argument("--yes", action="store_true", help="no confirmation prompt")
        if verb == "logs":
            p.add_argument("--lines", type=int, default=200)
            p.add_argument("--no-follow", action="store_false", dest="follow")

    return ap


def plan(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
    """The commands a subcommand runs, in order."""
    target = Target(args.name, args.zone, args.project, queued=not args.tpu_vm)
    if args.command == "create":
        config = load_config(args.config) if args.config else None
        tpu = tpu_slice(config, args.accelerator_type, args.num_slices,
                        args.config or "config")
        print(f"# {tpu.describe()}, {hosts_per_slice(tpu)} worker(s) per slice", file=sys.stderr)
        runtime = runtime_version(tpu, args.runtime_version)
        return [create_command(target, tpu, runtime, args.provisioning or "", extra)]
    if args.command == "status":
        return [status_command(target)]
    if args.command == "delete":
        return [delete_command(target, args.yes)]
    if args.command == "logs":
        return [ssh_command(target, logs_script(args.lines, args.follow), which="0")]
    if args.command == "stop":
        return [ssh_command(target, stop_script())]
    remote = Remote(args.remote_dir, args.venv, getattr(args, "python", Remote.python))
    if args.command == "setup":
        script = setup_script(remote, args.repo_url, args.ref)
        if args.repo_url:
            return [ssh_command(target, script)]
        return [archive_command(args.ref), scp_command(target, ARCHIVE, ARCHIVE.name),
                ssh_command(target, script)]
    if args.command == "train":
        overrides = [a for a in extra if a != "--"]
        bad = [a for a in overrides if a.startswith("-") and not a.startswith("--config.")]
        if bad:
            raise ValueError(f"unexpected arguments {bad}; trainer overrides look like "
                             "--config.<key>=<value>")
        config = load_config(args.config)
        workdir, path_overrides = run_paths(config, args.bucket, args.workdir, overrides,
                                            args.config)
        argv = trainer_argv(repo_relative(args.config), workdir, path_overrides, overrides)
        env = ["JAX_PLATFORMS=tpu", *parse_env(args.env)]  # fail loudly rather than run on CPU
        return [ssh_command(target, train_script(remote, argv, env, args.foreground))]
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.command not in ("create", "train"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        commands = plan(args, extra)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _run(commands, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
