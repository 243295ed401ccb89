"""A few steps of full-batch training on the post-training objectives (memorisation checks)."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from marco_jax.model.config import Qwen2Config
from marco_jax.model.qwen2 import init_model


def tiny_config(vocab: int) -> Qwen2Config:
    return Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_train(objective, batch, steps: int, lr: float, vocab: int, reference=None):
    """Full-batch Adam on a fresh tiny model (seed 0, fp32); the objective's metrics at every
    step, and the trained model."""
    graphdef, params = nnx.split(init_model(tiny_config(vocab), 0))
    ref_params = None if reference is None else nnx.split(reference)[1]
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def mean_loss(p):
            ref = None if ref_params is None else nnx.merge(graphdef, ref_params)
            loss_sum, sums = objective.loss(nnx.merge(graphdef, p), batch, ref)
            return loss_sum / sums["weight"], {**sums, "loss_sum": loss_sum}
        (_, sums), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, sums

    history = []
    for _ in range(steps):
        params, opt_state, sums = step(params, opt_state)
        history.append(objective.metrics(jax.tree.map(np.asarray, sums)))
    return history, nnx.merge(graphdef, params)

