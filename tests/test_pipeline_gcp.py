"""The Dataflow submission script: --dry-run prints the exact command and submits nothing."""

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dataflow_dry_run_prints_the_pipeline_command():
    out = subprocess.run(
        [sys.executable, str(REPO / "gcp" / "dataflow_clean.py"), "web", "--project", "proj",
         "--region", "europe-west4", "--bucket", "gs://bkt", "--input", "gs://bkt/raw/*.jsonl.gz",
         "--output", "gs://bkt/clean", "--languages", "en,zh", "--dry-run",
         "--lid_model", "gs://bkt/lid.176.bin"],
        capture_output=True, text=True, check=True, cwd=REPO).stdout.strip().splitlines()
    wheel, submit = (shlex.split(line) for line in out)
    assert wheel[1:4] == ["-m", "pip", "wheel"]
    assert submit[1:3] == ["-m", "data_pipelines.clean_web"]
    opts = dict(zip(submit[3::2], submit[4::2], strict=False))
    assert opts["--runner"] == "DataflowRunner" and opts["--project"] == "proj"
    assert opts["--region"] == "europe-west4" and opts["--languages"] == "en,zh"
    assert opts["--temp_location"] == "gs://bkt/dataflow/temp"
    assert opts["--lid_model"] == "gs://bkt/lid.176.bin"
    # the command's own flags parse: our CLI accepts it and leaves the Beam flags to Beam
    from data_pipelines.clean_web import parse_args

    cfg, beam_args = parse_args(submit[3:])
    assert cfg.languages == ("en", "zh") and "--runner" in beam_args


def test_dataflow_rejects_a_non_gcs_bucket():
    res = subprocess.run([sys.executable, str(REPO / "gcp" / "dataflow_clean.py"), "web",
                          "--project", "p", "--region", "r", "--bucket", "/tmp/x", "--input", "i",
                          "--output", "o", "--dry-run"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode != 0 and "gs://" in res.stderr
