"""Deduplication transforms. Every group of duplicates keeps one survivor, the record with the
smallest uid (so the result does not depend on worker order); the others are rejected naming the
survivor's id."""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam

from data_pipelines.accounting import REJECTED, reject
from data_pipelines.minhash import (
    MinHashConfig,
    UnionFind,
    band_digests,
    band_keys_of,
    bucket_edges,
    signature,
)

MINHASH_FIELD = "minhash"  # band digests the per-document DoFn computed (words tokenized once)


def _keep_first(kv, step: str, reason: str):
    records = sorted(kv[1], key=lambda r: r["uid"])
    yield records[0]
    for r in records[1:]:
        yield reject(r, step, reason, records[0]["id"])


class ExactDedup(beam.PTransform):
    """Records with equal `key(record)` are duplicates; rejected at `step` for `reason`."""

    def __init__(self, key: Callable[[dict], str], step: str, reason: str):
        super().__init__()
        self.key, self.step, self.reason = key, step, reason

    def expand(self, records):
        key = self.key
        return (records | "Key" >> beam.Map(lambda r: (key(r), r))
                | "Group" >> beam.GroupByKey()
                | "Split" >> beam.FlatMap(_keep_first, self.step, self.reason).with_outputs(
                    REJECTED, main="kept"))


class UnionFindFn(beam.CombineFn):
    """Connected components of the candidate-pair graph, merged across workers."""

    def create_accumulator(self):
        return UnionFind()

    def add_input(self, uf, edge):
        uf.union(*edge)
        return uf

    def merge_accumulators(self, ufs):
        ufs = list(ufs)
        for other in ufs[1:]:
            ufs[0].merge(other)
        return ufs[0]

    def extract_output(self, uf):
        return uf.roots()


def _node(doc: dict) -> str:
    """Graph node = "uid<TAB>id": sorts exactly like the uid (TAB sorts below printable
    characters) and names the survivor's id in reports without another join."""
    return f"{doc['uid']}\t{doc['id']}"


def _split_near(kv):
    _, grouped = kv
    docs, roots = list(grouped["doc"]), list(grouped["root"])
    for d in docs:
        if roots and roots[0] != _node(d):
            yield reject(d, "near_dedup", "near_duplicate", roots[0].split("\t", 1)[1])
        else:
            yield d


class NearDedup(beam.PTransform):
    """LSH bands grouped with GroupByKey -> candidate edges -> connected components (one
    CombineGlobally over the edges only, whose count is the number of duplicates, not of
    documents) -> everything but the smallest uid of each component is rejected."""

    def __init__(self, cfg: MinHashConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        cfg = self.cfg

        def bands(d: dict) -> list[tuple[str, str]]:
            digests = d.get(MINHASH_FIELD) or band_digests(
                signature(d["text"], d["lang"], cfg), cfg)
            return [(k, _node(d)) for k in band_keys_of(digests, d["lang"])]

        edges = (docs
                 | "Bands" >> beam.FlatMap(bands)
                 | "BandGroup" >> beam.GroupByKey()
                 | "Edges" >> beam.FlatMap(lambda kv: bucket_edges(list(kv[1])))
                 | "DistinctEdges" >> beam.Distinct())
        roots = (edges | "Components" >> beam.CombineGlobally(UnionFindFn())
                 | "RootPairs" >> beam.FlatMap(
                     lambda m: sorted((node.split("\t", 1)[0], root) for node, root in m.items())))
        keyed = docs | "KeyByUid" >> beam.Map(
            lambda d: (d["uid"], {k: v for k, v in d.items() if k != MINHASH_FIELD}))
        return ({"doc": keyed, "root": roots} | "JoinRoots" >> beam.CoGroupByKey()
                | "NearSplit" >> beam.FlatMap(_split_near).with_outputs(REJECTED, main="kept"))
