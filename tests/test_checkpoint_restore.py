"""A checkpoint saved under one mesh restores under another (and onto one device) with identical
values and the requested shardings."""

import jax
import numpy as np
import pytest
from flax import nnx

from marco_jax.checkpoint import restore_tree, save_tree
from marco_jax.model import abstract_model, get_preset, sharded_init_state
from marco_jax.parallel import build_mesh, pure_dict_shardings

TINY = get_preset("tiny", vocab_size=256, num_hidden_layers=2)


def test_saved_on_mesh_a_restores_on_mesh_b(tmp_path):
    mesh_a = build_mesh({"fsdp": 8})
    mesh_b = build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, state = sharded_init_state(TINY, mesh_a, seed=1)
    params = nnx.to_pure_dict(state)
    saved = jax.tree.map(np.asarray, params)
    save_tree(tmp_path / "ckpt", params)

    shardings_b = pure_dict_shardings(abstract_model(TINY)[1], mesh_b)
    restored = restore_tree(tmp_path / "ckpt", shardings_b)
    flat = jax.tree_util.tree_flatten_with_path(saved)[0]
    for (path, want), got, sharding in zip(flat, jax.tree.leaves(restored),
                                           jax.tree.leaves(shardings_b), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
        assert got.sharding == sharding, jax.tree_util.keystr(path)
    q = restored["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.addressable_shards[0].data.shape == (2, 128 // 2, 4 // 2, 32)

    # Onto one device, cast to bf16 on read (a serving copy).
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    single = restore_tree(tmp_path / "ckpt", jax.tree.map(lambda _: one, saved),
                               dtypes=jax.numpy.bfloat16)
    emb = single["model"]["embed_tokens"]["embedding"]
    assert emb.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(emb),
                                  saved["model"]["embed_tokens"]["embedding"].astype(emb.dtype))


def test_restore_with_mismatched_shardings_names_the_checkpoint(tmp_path):
    save_tree(tmp_path / "ckpt", {"a": np.zeros((4,), np.float32)})
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match="does not match the checkpoint's tree"):
        restore_tree(tmp_path / "ckpt", {"b": one})
    with pytest.raises(FileNotFoundError, match="not an Orbax PyTree checkpoint"):
        restore_tree(tmp_path / "missing", {"a": one})
