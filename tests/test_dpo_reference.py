"""Precomputed DPO reference log-probs: equal to the on-the-fly frozen reference, written beside
the data and reused under the same fingerprint, refused under another; sharded over processes
and over a device mesh gives the same numbers."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import make_hf_model
from jax.sharding import PartitionSpec
from parity_fixtures import load_hf_weights

from marco_jax.data.preference import EncodedPair, pack_pair_rows, read_preference_pairs
from marco_jax.data.row_packing import PackedSequence
from marco_jax.train.dpo import DPOConfig, DPOObjective
from marco_jax.train.reference_logps import (
    compute_reference_logps,
    load_reference_logps,
    make_logps_fn,
    make_sharded_logps_fn,
    params_digest,
    precomputed_reference_logps,
    reference_fingerprint,
)

VOCAB = 512
SAMPLE = Path(str(importlib.resources.files("marco_jax") / "sample_data" / "dpo" / "pairs.jsonl"))
SETTINGS = {"max_length": 128, "truncation": "none", "on_bad_record": "error"}
SEQ_LEN, PAIRS_PER_ROW = 256, 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    return tuple(load_hf_weights(make_hf_model(root, vocab=VOCAB, seed=s, name=f"m{s}")[1])
                 for s in (0, 1))


def fold(seq: PackedSequence) -> PackedSequence:
    return PackedSequence(seq.ids % VOCAB, seq.target_mask)


def read_pairs(path: Path) -> list[EncodedPair]:
    pairs, _ = read_preference_pairs(str(path), max_length=SETTINGS["max_length"])
    return [EncodedPair(fold(p.chosen), fold(p.rejected), p.language, p.pair_id) for p in pairs]


def dpo_loss(model, rows, config, reference=None):
    objective = DPOObjective(config, PAIRS_PER_ROW)
    batch = {k: jnp.asarray(rows[k]) for k in objective.batch_keys}
    loss_sum, sums = jax.jit(objective.loss)(model, batch, reference)
    return float(loss_sum / sums["weight"]), objective.metrics(
        {**jax.tree.map(np.asarray, sums), "loss_sum": np.asarray(loss_sum)})


def test_precomputed_equals_frozen_reference_and_is_reused(tmp_path, models):
    policy, reference = models
    data = tmp_path / "pairs.jsonl"
    shutil.copy(SAMPLE, data)
    pairs = read_pairs(data)
    logps_fn = make_logps_fn(reference, PAIRS_PER_ROW)
    model_fp = params_digest(nnx.state(reference))
    args = (pairs, str(data), SETTINGS, model_fp, SEQ_LEN, PAIRS_PER_ROW, 2)
    logps, path, reused = precomputed_reference_logps(logps_fn, *args)
    assert not reused and Path(path).parent == tmp_path and Path(path).is_file()
    assert Path(path).name.startswith("pairs.jsonl.ref_logps.") and logps.shape == (len(pairs), 2)

    rows = pack_pair_rows(pairs, SEQ_LEN, PAIRS_PER_ROW, ref_logps=logps)
    precomputed, m_pre = dpo_loss(policy, rows, DPOConfig(reference="precomputed"))
    on_the_fly, m_fly = dpo_loss(policy, rows, DPOConfig(reference="model"), reference)
    np.testing.assert_allclose(precomputed, on_the_fly, rtol=1e-5, atol=1e-6)
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies"):
        np.testing.assert_allclose(m_pre[key], m_fly[key], rtol=1e-5, atol=1e-6)

    # a restart / second epoch: the same fingerprint finds the file, nothing is recomputed
    def must_not_run(rows):
        raise AssertionError("recomputed")
    again, path2, reused = precomputed_reference_logps(must_not_run, *args)
    assert reused and path2 == path and np.array_equal(again, logps)

    # another reference model or changed data: another fingerprint, so another file ...
    other_fp = params_digest(nnx.state(policy))
    assert other_fp != model_fp
    fp = reference_fingerprint(str(data), SETTINGS, model_fp)
    assert reference_fingerprint(str(data), SETTINGS, other_fp) != fp
    assert reference_fingerprint(str(data), {**SETTINGS, "max_length": 64}, model_fp) != fp
    data.write_text(data.read_text().replace("56", "57"))
    assert reference_fingerprint(str(data), SETTINGS, model_fp) != fp
    # ... and a file under the wrong fingerprint is refused
    with pytest.raises(ValueError, match="another data set or reference model"):
        load_reference_logps(path, reference_fingerprint(str(data), SETTINGS, model_fp),
                             len(pairs))


def test_sharded_over_processes_and_devices(models):
    _, reference = models
    pairs = read_pairs(SAMPLE)
    single = compute_reference_logps(make_logps_fn(reference, PAIRS_PER_ROW), pairs, SEQ_LEN,
                                     PAIRS_PER_ROW, rows_per_batch=2)
    # three "processes": each computes only its share (NaN elsewhere) and hands it to the
    # all-gather; run once to collect the shares, then again with the gather answering them all
    fn = make_logps_fn(reference, PAIRS_PER_ROW)
    shares = []

    class Collected(Exception):
        pass

    def collect(local):
        shares.append(local)
        raise Collected

    for p in range(3):
        with pytest.raises(Collected):
            compute_reference_logps(fn, pairs, SEQ_LEN, PAIRS_PER_ROW, 2, p, 3, gather=collect)
    assert all(np.isnan(s).any() for s in shares)  # nobody computed everything alone
    stacked = np.stack(shares)
    for p in range(3):
        combined = compute_reference_logps(fn, pairs, SEQ_LEN, PAIRS_PER_ROW, 2, p, 3,
                                           gather=lambda local: stacked)
        np.testing.assert_allclose(combined, single, rtol=1e-6, atol=1e-5)
    # over an 8-device mesh, the batch sharded along "data"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_fn = make_sharded_logps_fn(reference, PAIRS_PER_ROW, mesh, PartitionSpec("data"))
    sharded = compute_reference_logps(sharded_fn, pairs, SEQ_LEN, PAIRS_PER_ROW,
                                      rows_per_batch=8)
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-4)
