"""Attention kernels (marco_jax/model/attention.py) against the XLA einsum path.

The TPU splash kernel runs here in Pallas interpret mode (the CPU backend has no Mosaic), which
executes the kernel's own blockwise program: block-sparse causal mask, online softmax, segment-id
masking and the dq / dkv backward kernels. Checked: outputs and gradients equal the XLA path with
packed rows, padding and GQA, inside the scanned and rematerialised model, sharded over an
8-device mesh under shard_map, and left-padded decoding (which always takes the XLA path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from marco_jax.model import attention
from marco_jax.model.config import get_preset, resolve_attention_impl
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.qwen2 import init_model
from marco_jax.model.target import compile_target
from marco_jax.parallel import build_mesh
from marco_jax.parallel.constraints import trace_under_mesh


def _qkv(b, t, h, kv, d, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, t, kv, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, kv, d), jnp.float32)
    return q, k, v


def _packed_segments(t):
    """Row 0: three documents then padding; row 1: left padding then one document."""
    row0 = np.concatenate([np.full(100, 1), np.full(60, 2), np.full(70, 3), np.zeros(t - 230)])
    row1 = np.concatenate([np.zeros(40), np.full(t - 40, 1)])
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def _real_weighted_loss(fn, segments, probe):
    """sum(out * probe) over real (non-padding) queries: what a loss sees."""
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out * probe * (segments != 0)[:, :, None, None])
    return loss


def _assert_equals_full_mask(kernel, q, k, v, segments, *, fwd_atol, grad_atol, probe_seed):
    """`kernel(q, k, v, segments)` equals `xla_attention` with the full mask on real queries,
    forward and d(q, k, v) of a random probe of the output."""
    real = (segments != 0)[:, :, None, None]
    mask = attention.self_attention_mask(segments)
    ref = jax.jit(attention.xla_attention)(q, k, v, mask)
    out = jax.jit(kernel)(q, k, v, segments)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=fwd_atol)

    # jitted: op by op, the blocked kernel's gradient took ~20 s of dispatches on a 2-core CPU
    probe = jax.random.normal(jax.random.PRNGKey(probe_seed), q.shape)
    g_ref = jax.jit(jax.grad(_real_weighted_loss(lambda *a: attention.xla_attention(*a, mask),
                                                 segments, probe), argnums=(0, 1, 2)))(q, k, v)
    g_kernel = jax.jit(jax.grad(_real_weighted_loss(lambda *a: kernel(*a, segments), segments,
                                                    probe), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", g_kernel, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=grad_atol, err_msg=f"d{name}")


def test_splash_equals_xla_forward_and_gradients_packed_gqa():
    t = 256
    q, k, v = _qkv(2, t, 4, 2, 64)
    segments = _packed_segments(t)
    # interpret mode on CPU
    _assert_equals_full_mask(attention.splash_attention, q, k, v, segments, fwd_atol=2e-5,
                             grad_atol=5e-5, probe_seed=7)


def test_cpu_causal_blocks_equal_full_mask_forward_and_gradients():
    t = 512  # 4 query blocks of 128; documents cross block boundaries
    assert attention._causal_blocks(t) == 4
    assert [attention._causal_blocks(n) for n in (100, 256, 2048, 2000)] == [1, 2, 8, 8]
    q, k, v = _qkv(2, t, 6, 2, 32, seed=1)
    segments = _packed_segments(t)
    out = attention.attend(q, k, v, segments, "xla")  # CPU: the blocked path
    np.testing.assert_array_equal(out, attention.causal_block_attention(q, k, v, segments))
    _assert_equals_full_mask(attention.causal_block_attention, q, k, v, segments, fwd_atol=1e-5,
                             grad_atol=2e-5, probe_seed=8)


def test_cpu_attention_of_one_block_equals_full_mask_forward_and_gradients():
    """A length that does not split into query blocks (here 250) runs as one block of every
    query: still the blocked kernel on CPU (`attend`), equal to the full-mask path."""
    t = 250
    assert attention._causal_blocks(t) == 1
    q, k, v = _qkv(2, t, 6, 2, 32, seed=4)
    segments = _packed_segments(t)
    out = attention.attend(q, k, v, segments, "xla")
    np.testing.assert_array_equal(out, attention.causal_block_attention(q, k, v, segments))
    _assert_equals_full_mask(attention.causal_block_attention, q, k, v, segments, fwd_atol=1e-5,
                             grad_atol=2e-5, probe_seed=10)


def test_cpu_causal_blocks_bfloat16_close_to_full_mask():
    """bf16 operands (scores and softmax in fp32 in both paths): equal at bf16 resolution."""
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(2, 256, 4, 2, 32, seed=2))
    segments = _packed_segments(256)
    _assert_equals_full_mask(attention.causal_block_attention, q, k, v, segments, fwd_atol=2e-2,
                             grad_atol=6e-2, probe_seed=9)


def test_heads_major_self_attention_equals_einsum_path():
    """Self-attention over the CPU cache layout (k [B*K, D, T], v [B*K, T, D]; a short
    prompt's prefill) equals the einsum path on every real query (packed documents, left
    padding, GQA)."""
    b, kv, d, t = 2, 2, 32, 250
    q, k, v = _qkv(b, t, 6, kv, d, seed=3)
    segments = _packed_segments(t)
    mask = attention.self_attention_mask(segments)
    k_cache = jnp.transpose(k, (0, 2, 3, 1)).reshape(b * kv, d, t)
    v_cache = jnp.swapaxes(v, 1, 2).reshape(b * kv, t, d)
    out = jax.jit(attention.xla_attention, static_argnums=4)(q, k_cache, v_cache, mask, True)
    ref = attention.xla_attention(q, k, v, mask)
    real = (segments != 0)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=1e-5)


def _model_loss(model, tokens, positions, segments):
    logits = model(tokens, positions, segments)
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    keep = (segments[:, 1:] != 0) & (segments[:, 1:] == segments[:, :-1])
    return jnp.sum(nll * keep)


def _packed_batch(t=128):
    seg = np.stack([np.concatenate([np.full(50, 1), np.full(t - 50, 2)]),
                    np.concatenate([np.zeros(30), np.full(t - 30, 1)])]).astype(np.int32)
    pos = np.zeros_like(seg)
    for r in range(2):
        for s in np.unique(seg[r]):
            idx = np.nonzero(seg[r] == s)[0]
            pos[r, idx] = np.arange(len(idx))
    tokens = np.random.default_rng(0).integers(0, 1000, seg.shape).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg)


def _model(impl, **kw):
    cfg = get_preset("tiny", vocab_size=1000, attention_impl=impl, scan_layers=True,
                     remat_policy="full", **kw)
    return init_model(cfg, seed=3)


def _loss_and_grads(model, batch):
    graphdef, params = nnx.split(model)
    fn = lambda p: _model_loss(nnx.merge(graphdef, p), *batch)  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(fn))(params)
    return loss, jax.tree.leaves(grads)


def test_splash_in_scanned_remat_model_equals_xla():
    batch = _packed_batch()
    loss_x, grads_x = _loss_and_grads(_model("xla"), batch)
    loss_s, grads_s = _loss_and_grads(_model("splash"), batch)
    np.testing.assert_allclose(loss_s, loss_x, rtol=1e-5)
    for a, b in zip(grads_s, grads_x, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)


def test_cpu_layouts_equal_the_accelerator_trace():
    """On CPU the model runs Linear as 2-D matmuls and attention over causal query blocks; traced
    for TPU (executed here) it keeps the N-D einsums and the full mask. Same loss and gradients."""
    batch = _packed_batch(t=256)
    model = _model("xla")
    loss_cpu, grads_cpu = _loss_and_grads(model, batch)
    with compile_target("tpu"):
        loss_acc, grads_acc = _loss_and_grads(model, batch)
    np.testing.assert_allclose(loss_cpu, loss_acc, rtol=1e-5)
    for a, b in zip(grads_cpu, grads_acc, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)


def test_splash_sharded_over_mesh_equals_xla():
    """data=2 x fsdp=2 rows, tensor=2 heads: each shard runs the kernel on its rows and heads."""
    mesh = build_mesh({"data": 2, "fsdp": 2, "tensor": 2}, {}, jax.devices()[:8])
    t = 128
    q, k, v = _qkv(4, t, 4, 2, 32, seed=1)
    segments = jnp.concatenate([_packed_segments(256)[:, :t]] * 2)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    q, k, v, segments = (jax.device_put(x, rows) for x in (q, k, v, segments))
    splash = jax.jit(trace_under_mesh(attention.splash_attention, mesh))
    lowered = splash.lower(q, k, v, segments).as_text()
    assert "shard_map" in lowered or "sdy.manual_computation" in lowered
    out = splash(q, k, v, segments)
    ref = attention.xla_attention(q, k, v, attention.self_attention_mask(segments))
    real = (segments != 0)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-5)


@pytest.mark.parametrize("per_layer", [True, False], ids=["cpu-cache", "stacked-cache"])
def test_left_padded_decoding_with_splash_config_equals_full_forward(per_layer):
    """Prefill + decode steps use the XLA path (the splash kernel is self-attention over whole
    blocks); their logits equal a full forward of the splash model on the same left-padded rows,
    with either KV-cache layout (per-layer heads-major buffers, CPU's; one stacked array, the
    accelerators')."""
    model = _model("splash")
    forward = nnx.jit(lambda m, *a: m(*a))  # jitted: eager model calls cost seconds each
    decode = nnx.jit(lambda m, *a: m.decode_step(*a))
    t, pad = 128, np.array([0, 37])
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 1000, (2, t)), jnp.int32)
    slots = np.arange(t)
    seg = jnp.asarray((slots[None] >= pad[:, None]).astype(np.int32))
    pos = jnp.asarray(np.maximum(slots[None] - pad[:, None], 0).astype(np.int32))
    full = forward(model, tokens, pos, seg)
    prefill = 120
    cache = KVCache.init(model.config, 2, t, per_layer=per_layer)
    assert cache.per_layer == per_layer
    logits, cache = decode(model, tokens[:, :prefill], pos[:, :prefill], seg[:, :prefill],
                           cache)
    steps = [logits[:, -1]]
    for i in range(prefill, t - 1):
        logits, cache = decode(model, tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1],
                               cache)
        steps.append(logits[:, -1])
    np.testing.assert_allclose(jnp.stack(steps, 1), full[:, prefill - 1:t - 1], atol=1e-4)
    real = np.asarray(seg)[:, :, None] != 0
    np.testing.assert_allclose(np.where(real, full, 0),
                               np.where(real, forward(_model("xla"), tokens, pos, seg), 0),
                               atol=1e-4)


def test_auto_resolves_per_platform_and_cudnn_refuses_off_gpu():
    assert resolve_attention_impl("auto", "tpu", "bfloat16", 4096) == "splash"
    assert resolve_attention_impl("auto", "tpu", "bfloat16", 100) == "xla"  # does not tile
    assert resolve_attention_impl("auto", "gpu", "bfloat16", 4096) == "cudnn"
    assert resolve_attention_impl("auto", "gpu", "float32", 4096) == "xla"  # cuDNN: 16-bit only
    assert resolve_attention_impl("auto", "cpu", "float32", 4096) == "xla"
    assert resolve_attention_impl("splash", "cpu", "float32", 4096) == "splash"
    q, k, v = _qkv(1, 128, 2, 1, 32)
    seg = jnp.ones((1, 128), jnp.int32)
    with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU; this trace targets 'cpu'"):
        attention.attend(q, k, v, seg, "cudnn")
    with compile_target("tpu"):
        assert attention.resolve("auto", jnp.bfloat16, 4096) == "splash"
    with pytest.raises(ValueError, match="multiple of 128"):
        attention.splash_block(200, interpret=False)


def test_splash_cost_counts_visited_causal_blocks_by_hand():
    # T=1024 in 512-blocks: 3 of the 4 blocks are visited; a matmul on a block is 2*512*512*D.
    block_matmul = 2 * 512 * 512 * 128
    extra_tiles = 3 - 2  # visited blocks minus one pass over the row's blocks
    assert attention.splash_cost("fwd", 1024, 128, 2) == (3 * 2 * block_matmul,
                                                          2 * extra_tiles * 512 * 128 * 2)
    assert attention.splash_cost("dq", 1024, 128, 2)[0] == 3 * 3 * block_matmul
    assert attention.splash_cost("dkv", 1024, 128, 2)[0] == 3 * 4 * block_matmul
    # Whole blocks cost more than the causal half of the square, less than the square.
    fwd = attention.splash_cost("fwd", 4096, 128, 2)[0]
    assert 2 * 2 * 4096 * 4096 * 128 / 2 < fwd < 2 * 2 * 4096 * 4096 * 128
