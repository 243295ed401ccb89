"""The typed experiment config: one schema, validated once at load; command-line overrides of every
key including maps; typos and wrong types rejected naming the key (exit 2 from the CLIs)."""

import subprocess
import sys
from pathlib import Path

import pytest

from marco_jax.config import ConfigError, Experiment, apply_overrides, load_config_file
from marco_jax.config.cli import split_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.py"


def test_every_config_file_loads_into_the_schema():
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.stem.endswith("_recipe") or path.stem.startswith("eval_"):
            continue
        assert isinstance(load_config_file(path), Experiment), path


def test_overrides_reach_typed_values_including_maps_and_dotted_task_names():
    exp = load_config_file(DEMO, [
        ("optim.peak_lr", "3e-5"), ("train.steps", "7"), ("model.scan_layers", "false"),
        ("data.shares", "english=0.4,chinese=0.2,high_resource=0.4"),
        ("data.task_sources.web.en", "gs://b/en/*.jsonl"),  # the key is "web.en"
        ("model.overrides.num_hidden_layers", "3"), ("mesh.ici.fsdp", "4"),
        ("data.modules", "my_tasks,other.tasks")])
    assert exp.optim.peak_lr == 3e-5 and exp.train.steps == 7 and exp.model.scan_layers is False
    assert exp.data.shares == {"english": 0.4, "chinese": 0.2, "high_resource": 0.4}
    assert exp.data.task_sources == {"web.en": "gs://b/en/*.jsonl"}
    assert exp.model.overrides == {"num_hidden_layers": 3}
    assert exp.mesh.ici == {"data": 1, "fsdp": 4, "tensor": 1}
    assert exp.data.modules == ("my_tasks", "other.tasks")
    # overriding is pure: the loaded experiment is unchanged
    again = apply_overrides(exp, [("train.steps", "9")])
    assert (exp.train.steps, again.train.steps) == (7, 9)


@pytest.mark.parametrize("key,value,message", [
    ("optim.peek_lr", "1", "'optim.peek_lr' does not exist (did you mean 'peak_lr'?)"),
    ("trian.steps", "1", "'trian' does not exist (did you mean 'train'?)"),
    ("data.seq_len", "0", "data.seq_len=0: expected >= 1"),
    ("data.seq_len", "long", "data.seq_len='long': expected an integer"),
    ("model.remat_policy", "some", "model.remat_policy='some': expected one of"),
    ("data.shares", "english", "expected entries key=value"),
    ("data.shares.english", "lots", "data.shares.english='lots': expected a number"),
    ("optim", "1", "optim is a section"),
    ("optim.grad_accum_steps", "3", "not divisible by optim.grad_accum_steps=3"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        load_config_file(DEMO, [(key, value)])


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_split_overrides_both_spellings():
    rest, ov = split_overrides(["--config", "c.py", "--config.a.b=1", "--config.c", "2", "-x"])
    assert rest == ["--config", "c.py", "-x"] and ov == [("a.b", "1"), ("c", "2")]


def test_cli_typo_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "marco_jax.train", "--config", str(DEMO),
                          "--workdir", "/tmp/never", "--config.optim.peek_lr=1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "optim.peek_lr" in lines[-1]
    assert "Traceback" not in out.stderr
