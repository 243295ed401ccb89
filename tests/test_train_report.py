"""Records the data pipeline replaced (data.on_bad_record=skip) reach the logged metrics and the
run's report.json, by source and reason."""

import json

import jax
from train_fixtures import synthetic_iterators, tiny_config

from marco_jax.train.loop import train


def test_bad_record_counts_are_logged_and_reported(tmp_path):
    def iterators(config, p, n):
        train_it, _ = synthetic_iterators(config, p, n)
        train_it.bad_records = lambda: {"web.kk": {"invalid_json": 2, "invalid_utf8": 1}}
        return train_it, None

    cfg = tiny_config(steps=2)
    summary = train(cfg, str(tmp_path / "run"), iterators=iterators, progress=False,
                    devices=jax.devices()[:1])
    assert summary["report"]["bad_records"] == {"web.kk": {"invalid_json": 2, "invalid_utf8": 1}}
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["bad_records/web.kk/invalid_json"] == 2.0
    assert records[-1]["bad_records/web.kk/invalid_utf8"] == 1.0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["bad_records"]["web.kk"]["invalid_json"] == 2
