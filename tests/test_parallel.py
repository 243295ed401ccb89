"""Meshes, logical-axis rules, sharded init, and sharded == single-device for the real train step
(logits, loss, params after one AdamW step, with the activation constraints on) on 8 CPU devices."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from marco_jax.config.schema import OptimSection
from marco_jax.model import abstract_model, get_preset, init_model, sharded_init_state
from marco_jax.parallel import (
    batch_sharding,
    build_mesh,
    explain_fallbacks,
    initialize_distributed,
    logical_to_spec,
    pure_dict_shardings,
    resolve_axis_sizes,
)
from marco_jax.parallel.constraints import constrain, trace_under_mesh
from marco_jax.train.aot_fit import abstract_batch
from marco_jax.train.lm import LanguageModeling
from marco_jax.train.optimizer import make_optimizer, make_schedule
from marco_jax.train.state import TrainState, train_state_shardings
from marco_jax.train.step import jit_train_step, make_train_step

TINY = get_preset("tiny", vocab_size=512, num_hidden_layers=2)  # 4 heads, 2 kv heads, 128 embed
MESHES = {
    "fsdp8": {"fsdp": 8, "tensor": 1},
    "fsdp4_tensor2": {"fsdp": 4, "tensor": 2},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}


def test_resolve_axis_sizes_fills_the_rest_and_rejects_bad_sizes():
    assert resolve_axis_sizes({"data": 2, "fsdp": -1, "tensor": 4}, 64) == (2, 8, 4)
    assert resolve_axis_sizes({"fsdp": 8}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="multiplies to 4 but there are 8"):
        resolve_axis_sizes({"fsdp": 4}, 8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        resolve_axis_sizes({"fsdp": -1, "tensor": -1}, 8)
    with pytest.raises(ValueError, match=r"unknown axes \['pipeline'\]"):
        resolve_axis_sizes({"pipeline": 2}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_axis_sizes({"fsdp": -1, "tensor": 3}, 8)


def test_build_mesh_ici_and_dcn():
    mesh = build_mesh({"fsdp": -1, "tensor": 2}, {"data": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    # DCN outermost: each data index is one "slice" of 4 consecutive devices.
    assert sorted(ids[0].ravel()) == [0, 1, 2, 3] and sorted(ids[1].ravel()) == [4, 5, 6, 7]


def test_logical_to_spec_by_hand_and_divisibility_fallback():
    mesh = build_mesh({"fsdp": 4, "tensor": 2})
    assert logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 128, 4, 32),
                           mesh) == P(None, "fsdp", "tensor", None)
    # vocab is listed before embed, so the tables take fsdp on vocab (lm-head logits stay
    # batch-split); every other weight takes it on embed.
    assert logical_to_spec(("vocab", "embed"), (512, 128), mesh) == P(("tensor", "fsdp"), None)
    assert logical_to_spec(("embed", "vocab"), (128, 512), mesh) == P(None, ("tensor", "fsdp"))
    assert logical_to_spec(("batch", "length"), (8, 16), mesh) == P(("data", "fsdp"), None)
    # 3 kv heads cannot split over tensor=2: replicated on that dimension, and reported.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (128, 3, 32),
                           mesh) == P("fsdp", None, None)
    # batch 2 over data(1) x fsdp(4): keeps only the prefix that divides.
    assert logical_to_spec(("batch",), (2,), build_mesh({"data": 2, "fsdp": 4})) \
        == P("data")
    with pytest.raises(ValueError, match="'sequence' has no rule"):
        logical_to_spec(("sequence",), (8,), mesh)
    tensor8 = build_mesh({"fsdp": 1, "tensor": 8})
    notes = explain_fallbacks(abstract_model(TINY)[1], tensor8)
    assert any("k_proj/kernel: kv_heads=2 not split over ['tensor']" in n for n in notes)


def test_sharded_init_matches_single_device_init():
    mesh = build_mesh({"fsdp": 4, "tensor": 2})
    _, state = sharded_init_state(TINY, mesh, seed=3)
    got = nnx.to_pure_dict(state)
    ref = nnx.to_pure_dict(jax.jit(lambda: nnx.state(init_model(TINY, 3)))())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = got["model"]["layers"]["self_attn"]["q_proj"]["kernel"]  # [L, embed, heads, head_dim]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 128 // 4, 4 // 2, 32)


# eps=1e-4: Adam's g / (|g| + eps) turns the float rounding of a near-zero gradient (whose
# summation order differs per mesh) into an O(lr) difference when eps is tiny (the first step is
# ~lr * sign(g)); with eps=1e-4 a rounding error d in g moves a parameter by ~lr * d / eps.
OPTIM = OptimSection(peak_lr=1e-3, end_lr_ratio=0.1, warmup_steps=0, schedule="constant", b1=0.9,
                     b2=0.95, eps=1e-4, weight_decay=0.1, clip_norm=1.0, grad_accum_steps=2)
STEPS = 10


def _make_step(graphdef, tx):
    step = make_train_step(graphdef, tx, LanguageModeling(["a", "b", "c"], 8),
                           make_schedule(OPTIM, STEPS), OPTIM.grad_accum_steps)

    def with_loss(state, batch, reference=None):
        state, sums = step(state, batch, reference)
        return state, {**sums, "loss": sums["loss_sum"] / sums["weight"]}
    return with_loss


def _batch(b=8, t=16):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, TINY.vocab_size, (b, t + 1)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2:] = 2
    seg[1, -5:] = 0
    pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "positions": pos.astype(np.int32),
            "segment_ids": seg, "loss_mask": (seg > 0).astype(np.int32),
            "source_ids": np.where(seg > 0, np.arange(b)[:, None] % 3, -1).astype(np.int32)}


def _run(mesh_axes):
    """(logits, loss, params after one step) as numpy, on one device or on a mesh."""
    batch = _batch()
    tx = make_optimizer(OPTIM, STEPS)
    if mesh_axes is None:
        graphdef, state = nnx.split(init_model(TINY, 0))
        params = nnx.to_pure_dict(jax.jit(lambda: nnx.state(init_model(TINY, 0)))())
        train_state = TrainState.create(params, tx)
        dev_batch = {k: jnp.asarray(v) for k, v in batch.items()}
        step = jit_train_step(_make_step(graphdef, tx), None, None, None)
        logits_fn = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["tokens"], b["positions"],
                                                                 b["segment_ids"]))
    else:
        mesh = build_mesh(mesh_axes)
        graphdef, state = sharded_init_state(TINY, mesh, 0)
        params = nnx.to_pure_dict(state)
        shardings = pure_dict_shardings(abstract_model(TINY)[1], mesh)
        abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
        state_shardings = train_state_shardings(abstract, shardings, mesh, tx)
        train_state = jax.jit(lambda p: TrainState.create(p, tx),
                              out_shardings=state_shardings)(params)
        bs = batch_sharding(mesh)
        dev_batch = {k: jax.device_put(v, bs) for k, v in batch.items()}
        step = jit_train_step(_make_step(graphdef, tx), state_shardings, bs, mesh)
        logits_fn = jax.jit(trace_under_mesh(  # with the model's residual constraints on
            lambda p, b: nnx.merge(graphdef, p)(b["tokens"], b["positions"], b["segment_ids"]),
            mesh), in_shardings=(shardings, bs))
        assert train_state.params["model"]["embed_tokens"]["embedding"].sharding.spec == \
            shardings["model"]["embed_tokens"]["embedding"].spec
    logits = np.asarray(logits_fn(train_state.params, dev_batch))
    new_state, metrics = step(train_state, dev_batch)
    return (logits, float(metrics["loss"]), jax.tree.map(np.asarray, new_state.params),
            np.asarray(metrics["source_loss_sum"]), float(metrics["grad_norm"]))


@pytest.fixture(scope="module")
def single_device_run():
    return _run(None)


# The three-axis mesh runs by default; the other two (same code path, ~30 s each) with -m slow.
@pytest.mark.parametrize("name", [
    "data2_fsdp2_tensor2",
    pytest.param("fsdp8", marks=pytest.mark.slow),
    pytest.param("fsdp4_tensor2", marks=pytest.mark.slow),
])
def test_sharded_step_equals_single_device(name, single_device_run):
    ref_logits, ref_loss, ref_params, ref_src, ref_gnorm = single_device_run
    logits, loss, params, src, gnorm = _run(MESHES[name])
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(src, ref_src, rtol=1e-5)
    np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-5)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_params)[0]
    for (path, a), b in zip(flat_ref, jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    init = nnx.to_pure_dict(jax.jit(lambda: nnx.state(init_model(TINY, 0)))())
    moved = sum(not np.allclose(a, b) for a, b in
                zip(jax.tree.leaves(init), jax.tree.leaves(params), strict=True))
    assert moved == len(jax.tree.leaves(init))  # the step really updated every parameter


def test_initialize_distributed_single_process_and_bad_env():
    assert initialize_distributed(env={}) is False
    with pytest.raises(ValueError, match="without num_processes"):
        initialize_distributed(env={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


def test_constrain_pins_activation_layout_under_a_mesh_only():
    x = jnp.ones((8, 16, 128))
    assert constrain(x, ("batch", "length", "embed")) is x  # no mesh: identity
    mesh = build_mesh({"fsdp": 4, "tensor": 2})
    with jax.sharding.set_mesh(mesh):
        y = jax.jit(lambda a: constrain(a * 2, ("batch", "length", "mlp")))(x)
    want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    assert y.sharding.is_equivalent_to(want, 3)
    assert y.addressable_shards[0].data.shape == (2, 16, 64)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((8, 16, 128)))


def _lowered_step_text(mesh_axes) -> str:
    """StableHLO of the real jitted train step for the tiny model (abstract inputs, no compile)."""
    tx = make_optimizer(OPTIM, STEPS)
    graphdef, abstract = abstract_model(TINY)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx), nnx.to_pure_dict(abstract))
    step = _make_step(graphdef, tx)
    if mesh_axes is None:
        return jit_train_step(step, None, None, None).lower(
            state, abstract_batch(8, 16, None)).as_text()
    mesh = build_mesh(mesh_axes)
    shardings = train_state_shardings(state, pure_dict_shardings(abstract, mesh), mesh, tx)
    bs = batch_sharding(mesh)
    lowered = jit_train_step(step, shardings, bs, mesh).lower(state, abstract_batch(8, 16, bs))
    return lowered.as_text()


def test_train_step_pins_the_residual_stream_under_a_mesh_only():
    assert "sharding_constraint" not in _lowered_step_text(None)
    text = _lowered_step_text(MESHES["data2_fsdp2_tensor2"])
    pinned = re.findall(r"sdy\.sharding_constraint \S+ <@mesh, (\[.*?\])> : tensor<([\dx]+)x\w+>",
                        text)
    # Embedding output, each layer's input and output (forward and rematerialised backward), and
    # the hidden state entering the loss: all [micro-batch 4, 16, 128], rows over data x fsdp.
    assert len(pinned) >= 4
    assert set(pinned) == {('[{"data", "fsdp"}, {}, {}]', "4x16x128")}
