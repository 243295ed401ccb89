"""Log-likelihood of continuations given contexts (the primitive behind multiple-choice and
perplexity evals): per-token log-probs, their sum, and whether greedy decoding would have produced
the continuation.

A request (context, continuation) becomes one right-padded row: inputs = (context +
continuation)[:-1], targets = (context + continuation)[1:], scored on the continuation's targets.
Rows are sorted by length and batched at a fixed batch size and a length rounded up to
`pad_multiple`, so a whole eval compiles a handful of shapes. Log-probs are computed over sequence
chunks so the [batch, len, vocab] fp32 logits never exist at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.model.logprobs import target_logprobs
from marco_jax.model.qwen2 import Qwen2ForCausalLM


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    logprob: float  # sum of the continuation's token log-probs
    token_logprobs: np.ndarray  # [len(continuation)] float32
    is_greedy: bool  # every continuation token is the argmax given its prefix


def _token_logprobs(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array,
                    positions: jax.Array, segment_ids: jax.Array, targets: jax.Array,
                    chunk: int) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden(tokens, positions, segment_ids)
    return target_logprobs(hidden, model.lm_head_kernel(), targets, chunk)


_token_logprobs_jit = jax.jit(_token_logprobs, static_argnums=(0,), static_argnames=("chunk",))


def score_batch(model: Qwen2ForCausalLM, tokens: jax.Array | np.ndarray,
                targets: jax.Array | np.ndarray, target_mask: jax.Array | np.ndarray,
                segment_ids: jax.Array | np.ndarray | None = None,
                positions: jax.Array | np.ndarray | None = None, chunk: int = 256
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Score one batch of rows. tokens/targets/target_mask [B, T] (targets[t] is the token after
    tokens[t]); segment_ids (0 = padding) and positions default to one document per row.
    Returns (sum of masked log-probs [B], per-token log-probs [B, T] (0 where unmasked),
    is_greedy [B]: every masked target is the argmax)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    chunk = min(chunk, t)
    pad = -t % chunk
    widen = lambda a: jnp.pad(jnp.asarray(a, jnp.int32), ((0, 0), (0, pad)))
    graphdef, state = nnx.split(model)
    logprob, is_argmax = _token_logprobs_jit(graphdef, state, widen(tokens), widen(positions),
                                             widen(segment_ids), widen(targets), chunk=chunk)
    logprob, is_argmax = logprob[:, :t], is_argmax[:, :t]
    mask = jnp.asarray(target_mask).astype(bool)
    logprob = jnp.where(mask, logprob, 0.0)
    return logprob.sum(axis=1), logprob, jnp.all(is_argmax | ~mask, axis=1)


def score_requests(model: Qwen2ForCausalLM,
                   requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   batch_size: int = 8, max_len: int | None = None, pad_multiple: int = 64,
                   empty_context_id: int | None = None, pad_id: int = 0) -> list[ScoreResult]:
    """Score (context_ids, continuation_ids) pairs; results come back in request order.

    Inputs longer than `max_len` lose context tokens from the left (the continuation must fit).
    An empty context is an error unless `empty_context_id` is given (lm-eval-harness prepends
    the end-of-text token there).
    """
    rows = []
    for i, (context, continuation) in enumerate(requests):
        context, continuation = list(context), list(continuation)
        if not continuation:
            raise ValueError(f"request {i}: empty continuation; nothing to score")
        if not context:
            if empty_context_id is None:
                raise ValueError(f"request {i}: empty context; pass empty_context_id (e.g. the "
                                 "end-of-text id) to score it unconditionally")
            context = [empty_context_id]
        full = context + continuation
        inputs, targets = full[:-1], full[1:]
        if max_len is not None and len(inputs) > max_len:
            if len(continuation) > max_len:
                raise ValueError(f"request {i}: continuation of {len(continuation)} tokens does "
                                 f"not fit max_len={max_len}")
            inputs, targets = inputs[-max_len:], targets[-max_len:]
        rows.append((i, inputs, targets, len(continuation)))

    rows.sort(key=lambda r: -len(r[1]))
    results: list[ScoreResult | None] = [None] * len(rows)
    for start in range(0, len(rows), batch_size):
        group = rows[start:start + batch_size]
        width = -(-len(group[0][1]) // pad_multiple) * pad_multiple
        tokens = np.full((batch_size, width), pad_id, np.int32)
        targets = np.full((batch_size, width), pad_id, np.int32)
        segment_ids = np.zeros((batch_size, width), np.int32)
        target_mask = np.zeros((batch_size, width), np.int32)
        for r, (_, inp, tgt, n_cont) in enumerate(group):
            tokens[r, :len(inp)] = inp
            targets[r, :len(tgt)] = tgt
            segment_ids[r, :len(inp)] = 1
            target_mask[r, len(tgt) - n_cont:len(tgt)] = 1
        total, per_token, greedy = jax.device_get(
            score_batch(model, tokens, targets, target_mask, segment_ids))
        for r, (i, _, tgt, n_cont) in enumerate(group):
            results[i] = ScoreResult(logprob=float(total[r]),
                                     token_logprobs=per_token[r, len(tgt) - n_cont:len(tgt)],
                                     is_greedy=bool(greedy[r]))
    return results
