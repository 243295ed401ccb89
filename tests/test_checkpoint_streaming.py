"""The streaming converter writes Orbax's per-array layout by hand (an array that is never whole in
memory cannot go through Orbax's save): pin its metadata to what Orbax itself writes for the
same tree, so an Orbax upgrade that changes the format fails here, and check Orbax restores it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from marco_jax.checkpoint.streaming import StreamingOrbaxWriter


def test_streamed_layout_equals_orbax_own_and_restores(tmp_path):
    tree = {"model": {"kernel": jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)},
            "norm": jnp.ones((5,), jnp.bfloat16)}
    writer = StreamingOrbaxWriter(tmp_path / "ours")
    writer.create(("model", "kernel"), (2, 3, 4), np.float32, [1, 3, 4])
    for layer in range(2):  # one layer at a time, as the converter streams
        writer.write(("model", "kernel"), (layer,), np.asarray(tree["model"]["kernel"][layer]))
    writer.create(("norm",), (5,), jnp.bfloat16, [5])
    writer.write(("norm",), (slice(0, 5),), np.asarray(tree["norm"]))
    writer.finalize()

    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False)
    ocp.Checkpointer(handler).save(tmp_path / "orbax", args=ocp.args.PyTreeSave(tree))
    ours = json.loads((tmp_path / "ours" / "_METADATA").read_text())
    theirs = json.loads((tmp_path / "orbax" / "_METADATA").read_text())
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k != "tree_metadata"} == \
        {k: v for k, v in theirs.items() if k != "tree_metadata"}
    assert ours["tree_metadata"].keys() == theirs["tree_metadata"].keys()
    for key, entry in theirs["tree_metadata"].items():
        assert ours["tree_metadata"][key]["key_metadata"] == entry["key_metadata"]
        assert ours["tree_metadata"][key]["value_metadata"]["value_type"] == \
            entry["value_metadata"]["value_type"]

    restored = ocp.StandardCheckpointer().restore(tmp_path / "ours")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype
