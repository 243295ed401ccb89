"""Reading a finished run's outputs back (reports, stats, shards)."""

from __future__ import annotations

import json

from apache_beam.io.filesystems import FileSystems


def read_json(path: str) -> dict:
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def read_report(output: str) -> dict:
    return read_json(f"{output}/report.json")


def read_stats(output: str) -> dict:
    return read_json(f"{output}/stats.json")


def read_jsonl_shards(pattern: str) -> list[dict]:
    out = []
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            out += [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line]
    return out
