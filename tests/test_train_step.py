"""The train step: chunked loss vs full-logits reference, grad accumulation == one big batch,
weight-decay mask, schedule, NaN guard."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from marco_jax.config.schema import Experiment, OptimSection, TrainSection
from marco_jax.model.config import get_preset
from marco_jax.model.logprobs import per_source_sums, token_nll, weighted_nll_sum
from marco_jax.model.qwen2 import init_model
from marco_jax.model.target import compile_target
from marco_jax.train.lm import LanguageModeling
from marco_jax.train.optimizer import decay_mask, make_optimizer, make_schedule
from marco_jax.train.state import TrainState
from marco_jax.train.step import make_train_step

VOCAB = 300


def _config(accum=1, steps=10):
    return Experiment(optim=OptimSection(grad_accum_steps=accum, warmup_steps=2, peak_lr=1e-3),
                      train=TrainSection(steps=steps, loss_chunk=8))


def _step_fn(graphdef, tx, cfg, num_sources):
    objective = LanguageModeling([f"s{i}" for i in range(num_sources)], cfg.train.loss_chunk)
    step = make_train_step(graphdef, tx, objective, make_schedule(cfg.optim, cfg.train.steps),
                           cfg.optim.grad_accum_steps)

    def with_loss(state, batch):
        state, sums = step(state, batch)
        return state, {**sums, "loss": sums["loss_sum"] / sums["weight"]}
    return with_loss


def _batch(rng, b=4, t=16, num_sources=3):
    tokens = rng.integers(0, VOCAB, (b, t + 1)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2:] = 2  # two packed documents per row
    seg[0, -3:] = 0  # padding tail
    pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0)
    mask = (seg > 0).astype(np.int32)
    src = np.where(seg > 0, rng.integers(0, num_sources, (b, 1)), -1).astype(np.int32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "positions": pos.astype(np.int32),
            "segment_ids": seg, "loss_mask": mask, "source_ids": src}


def _reference_nll(hidden, kernel, targets):
    logits = jnp.einsum("bte,ev->btv", hidden, kernel)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_chunked_loss_and_grads_match_full_logits(platform):
    """Both traces of the fused loss (the softmax is recomputed from the logits off CPU)."""
    with compile_target(platform):
        _check_chunked_loss_and_grads()


def _check_chunked_loss_and_grads():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(8, VOCAB)), jnp.float32)
    t = jnp.asarray(rng.integers(0, VOCAB, (2, 16)), jnp.int32)
    w = jnp.asarray(rng.integers(0, 2, (2, 16)), jnp.float32)
    ref = lambda h, k: jnp.sum(_reference_nll(h, k, t) * w)
    fused = lambda h, k: weighted_nll_sum(h, k, t, w, 4)[0]
    remat = lambda h, k: jnp.sum(token_nll(h, k, t, 4) * w)
    np.testing.assert_allclose(fused(h, k), ref(h, k), rtol=1e-5)
    np.testing.assert_allclose(remat(h, k), ref(h, k), rtol=1e-5)
    g_ref = jax.grad(ref, argnums=(0, 1))(h, k)
    for fn in (fused, remat):
        g = jax.jit(jax.grad(fn, argnums=(0, 1)))(h, k)
        for a, b in zip(g, g_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    nll = weighted_nll_sum(h, k, t, w, 4)[1]
    np.testing.assert_allclose(nll, _reference_nll(h, k, t), rtol=1e-5)


def _dot_output_dtypes(fn, *args):
    """Output dtypes of every dot_general in fn's jaxpr (nested jaxprs included)."""
    found = []

    def walk(jaxpr):
        found.extend(e.outvars[0].aval.dtype for e in jaxpr.eqns
                     if e.primitive.name == "dot_general")
        for sub in jax.extend.core.subjaxprs(jaxpr):
            walk(sub)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
def test_logits_dtype_rounds_the_stored_logits_only(logits_dtype):
    """bf16 inputs whose products sum exactly in fp32, so the stored logits are exactly the fp32
    logits rounded to `logits_dtype`: the losses must equal a float64 log-softmax of those, and
    the custom-VJP gradient must equal the hand-written softmax - onehot gradient."""
    rng = np.random.default_rng(3)
    h = rng.integers(-2, 3, (2, 16, 8)).astype(np.float32)
    k = (rng.integers(-64, 65, (8, VOCAB)) / 8).astype(np.float32)  # logits up to ~100
    t = rng.integers(0, VOCAB, (2, 16)).astype(np.int32)
    w = rng.integers(0, 2, (2, 16)).astype(np.float32)
    exact = np.einsum("bte,ev->btv", h.astype(np.float64), k.astype(np.float64))
    stored = np.asarray(jnp.asarray(exact, jnp.float32).astype(logits_dtype), np.float64)
    lse = np.log(np.sum(np.exp(stored - stored.max(-1, keepdims=True)), -1)) + stored.max(-1)
    nll_ref = lse - np.take_along_axis(stored, t[..., None], -1)[..., 0]
    hb, kb = jnp.asarray(h, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    fused = lambda h, k: weighted_nll_sum(h, k, t, w, 4, logits_dtype)  # noqa: E731
    loss, nll = fused(hb, kb)
    np.testing.assert_allclose(nll, nll_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loss, np.sum(nll_ref * w), rtol=1e-5)
    remat = token_nll(hb, kb, t, 4, logits_dtype)
    np.testing.assert_allclose(remat, nll_ref, rtol=1e-5, atol=1e-4)
    if logits_dtype == "bfloat16":  # the rounding is large enough to see: the test can fail
        exact_lse = np.log(np.sum(np.exp(exact - exact.max(-1, keepdims=True)), -1))
        exact_nll = exact_lse + exact.max(-1) - np.take_along_axis(exact, t[..., None], -1)[..., 0]
        assert np.max(np.abs(exact_nll - nll_ref)) > 1e-2
    # The matmul writes its logits in logits_dtype (what sets the head's HBM bytes).
    assert jnp.dtype(logits_dtype) in _dot_output_dtypes(lambda h, k: fused(h, k)[0], hb, kb)
    # Gradient: w * (softmax(stored) - onehot), through the kernel, in bf16 matmuls.
    p = np.exp(stored - lse[..., None])
    d_logits = (p - np.eye(VOCAB)[t]) * w[..., None]
    dh_ref = np.einsum("btv,ev->bte", d_logits, k)
    dk_ref = np.einsum("bte,btv->ev", h, d_logits)
    dh, dk = jax.jit(jax.grad(lambda h, k: fused(h, k)[0], argnums=(0, 1)))(hb, kb)
    np.testing.assert_allclose(np.asarray(dh, np.float64), dh_ref, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dk, np.float64), dk_ref, rtol=2e-2, atol=2e-2)


def test_per_source_sums_by_hand():
    nll = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    mask = jnp.array([[1, 1, 0, 1]])
    src = jnp.array([[0, 1, 1, -1]])
    sums, counts = per_source_sums(nll, mask, src, 2)
    np.testing.assert_allclose(sums, [1.0, 2.0])
    np.testing.assert_allclose(counts, [1.0, 1.0])


def _run(accum, batch, steps=1, tx=None):
    cfg = _config(accum)
    model = init_model(get_preset("tiny", vocab_size=VOCAB), seed=1)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx = tx or make_optimizer(cfg.optim, cfg.train.steps)
    st = TrainState.create(params, tx)
    step = jax.jit(_step_fn(graphdef, tx, cfg, num_sources=3))
    out = []
    for _ in range(steps):
        st, m = step(st, batch)
        out.append(m)
    return st, out


@pytest.fixture(scope="module")
def sgd_runs():
    """One step on the same batch with 1 and with 4 micro-batches. Plain SGD with lr 1 (behind
    the same NaN guard): the param change *is* the gradient, so accumulated gradients are compared
    directly (Adam would amplify rounding on near-zero gradients)."""
    batch = _batch(np.random.default_rng(1), b=4)
    sgd = optax.apply_if_finite(optax.sgd(1.0), 10**9)
    return batch, _run(1, batch, tx=sgd), _run(4, batch, tx=sgd)


def test_grad_accumulation_equals_one_big_batch(sgd_runs):
    _, (s1, m1), (s4, m4) = sgd_runs
    for a, b in zip(m1, m4, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
        np.testing.assert_allclose(a["source_loss_sum"], b["source_loss_sum"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_step_loss_matches_full_logits_model_and_sources(sgd_runs):
    batch, (_, (m,)), _ = sgd_runs
    model = init_model(get_preset("tiny", vocab_size=VOCAB), seed=1)
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"]
    expected = float(jnp.sum(nll * mask) / mask.sum())
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
    for s in range(3):
        sel = (batch["source_ids"] == s) & (mask > 0)
        np.testing.assert_allclose(m["source_tokens"][s], sel.sum())
        np.testing.assert_allclose(m["source_loss_sum"][s], jnp.sum(jnp.where(sel, nll, 0)),
                                   rtol=1e-5)


def test_nan_gradients_skip_the_update_and_are_counted():
    batch = _batch(np.random.default_rng(3))
    cfg = _config()
    model = init_model(get_preset("tiny", vocab_size=VOCAB), seed=1)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    params["model"]["norm"]["scale"] = params["model"]["norm"]["scale"].at[0].set(jnp.nan)
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    st0 = TrainState.create(params, tx)
    st1, m = jax.jit(_step_fn(graphdef, tx, cfg, num_sources=0))(st0, batch)
    assert int(m["skipped_steps"]) == 1 and int(st1.step) == 1
    emb0 = st0.params["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(st1.params["model"]["embed_tokens"]["embedding"], emb0)


def test_weight_decay_mask_excludes_biases_and_norms():
    params = nnx.to_pure_dict(nnx.split(init_model(get_preset("tiny", vocab_size=VOCAB)))[1])
    mask = decay_mask(params)
    assert mask["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert not mask["model"]["layers"]["self_attn"]["q_proj"]["bias"]
    assert not mask["model"]["layers"]["input_layernorm"]["scale"]
    assert not mask["model"]["norm"]["scale"]
    assert mask["model"]["embed_tokens"]["embedding"]
    assert not decay_mask(params, decay_embeddings=False)["model"]["embed_tokens"]["embedding"]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warmup_and_end(kind):
    optim = OptimSection(peak_lr=1e-3, warmup_steps=10, end_lr_ratio=0.1, schedule=kind)
    s = make_schedule(optim, 110)
    np.testing.assert_allclose(s(0), 0.0)
    np.testing.assert_allclose(s(5), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(s(10), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(s(110), 1e-3 if kind == "constant" else 1e-4, rtol=1e-5)
    if kind == "cosine":
        np.testing.assert_allclose(s(60), 1e-4 + 0.5 * 9e-4, rtol=1e-5)


def test_adamw_matches_optax_reference_first_step():
    """One step of our optimizer == optax.adamw applied by hand with the same mask and clip."""
    cfg = _config()
    params = {"w": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
    grads = {"w": jnp.full((3, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    upd, _ = tx.update(grads, tx.init(params), params)
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(make_schedule(cfg.optim, 10), b1=0.9, b2=0.95, eps=1e-8,
                                  weight_decay=0.1, mask={"w": True, "bias": False}))
    upd_ref, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd_ref), strict=True):
        np.testing.assert_allclose(a, b)
