"""Next-token selection: greedy, temperature, top-k and top-p (nucleus), in the order Hugging Face
applies them (temperature, then top-k, then top-p on what top-k kept)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from marco_jax.model.packed_matmul import PackedKernel, packed_argmax_parts


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Hashable, so it can be a static jit argument (one compile per setting).

    temperature: 0 means greedy (argmax); top_k: 0 means off; top_p: 1.0 means off.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}; expected >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}; expected 0 < top_p <= 1")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}; expected >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scaled fp32 logits [..., V] with tokens outside the top-k / top-p support set
    to -inf. Ties at a threshold are all kept (as Hugging Face's warpers do)."""
    logits = logits.astype(jnp.float32)
    if params.temperature > 0:
        logits = logits / params.temperature
    if params.top_k == 0 and params.top_p >= 1.0:
        return logits
    vocab = logits.shape[-1]
    if params.top_k > 0:
        # top_k values come sorted descending; top-p then only needs those k, not a full sort.
        sorted_desc = jax.lax.top_k(logits, min(params.top_k, vocab))[0]
    else:
        sorted_desc = -jnp.sort(-logits, axis=-1)
    threshold = sorted_desc[..., -1:]
    if params.top_p < 1.0:
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Smallest prefix whose mass reaches top_p: keep a token if the mass ranked above it is
        # still below top_p. The first token always qualifies (mass_before = 0).
        keep = mass_before < params.top_p
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def _first_index(hits: jax.Array) -> jax.Array:
    """The first True index along the last axis (the axis size where there is none)."""
    index = jax.lax.broadcasted_iota(jnp.int32, hits.shape, hits.ndim - 1)
    return jnp.min(jnp.where(hits, index, hits.shape[-1]), axis=-1)


def _first_max_index(x: jax.Array) -> jax.Array:
    """argmax over the last axis: the first index reaching the max, or the row's first NaN.
    NaNs are found by flag, not by the max: XLA:CPU's vectorised max may drop a NaN."""
    nan = jnp.isnan(x)
    return _first_index(jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan,
                                  x == jnp.max(x, axis=-1, keepdims=True)))


def _first_max_index_without_nan(x: jax.Array) -> jax.Array:
    return _first_index(x == jnp.max(x, axis=-1, keepdims=True))


# Group widths the two-level argmax tries, in order; a vocabulary none divides (into at least
# two groups) is searched in one level.
GREEDY_GROUPS = (128, 64, 32, 16)


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """argmax over the last axis as int32, with jnp.argmax's ties (first index) and NaNs (the
    first NaN wins). XLA:CPU runs argmax's (value, index) reduction slowly, and a max + masked
    min-index over the whole row reads it three times; so the row is cut into contiguous
    groups: one pass takes each group's max, the first group reaching the row's max is found
    among those few, and only that group is searched for the first index. A float max may drop
    a NaN but a sum never does: a batch whose logits sum to NaN (a diverged model) takes the
    one-level search, exact for NaNs. [8, 151936] fp32 on a 2-core CPU: 0.32 ms vs 1.1-1.6
    (one level) and 2.6 (`jnp.argmax`); [64, 151936]: 2.1 vs 26-43 and 19-20 ms."""
    vocab = logits.shape[-1]
    group = next((g for g in GREEDY_GROUPS if vocab % g == 0 and vocab // g > 1), None)
    if group is None:
        return _first_max_index(logits)

    def two_level(x: jax.Array) -> jax.Array:
        grouped = x.reshape(*x.shape[:-1], vocab // group, group)
        first_group = _first_max_index_without_nan(jnp.max(grouped, axis=-1))
        members = jnp.take_along_axis(grouped, first_group[..., None, None], axis=-2)
        return first_group * group + _first_max_index_without_nan(members[..., 0, :])

    has_nan = jnp.isnan(jnp.sum(logits, dtype=jnp.float32))
    return jax.lax.cond(has_nan, _first_max_index, two_level, logits)


def packed_greedy_tokens(hidden: jax.Array, head: PackedKernel, columns: int | None = None
                         ) -> jax.Array:
    """`greedy_tokens(hidden @ head)` over the first `columns` ids (default all), without the
    logits: the CPU kernel keeps running maxima while it multiplies (`packed_argmax_parts`), and
    the smallest column holding a row's largest candidate (or its first NaN) is the token. On a
    152k vocabulary at batch 8, writing the logits and the argmax's passes over them took
    0.5-0.7 ms of a ~3 ms step (2-core CPU). hidden [B, E] -> int32 [B]."""
    return tokens_from_parts(*packed_argmax_parts(hidden, head, columns))


def tokens_from_parts(value: jax.Array, column: jax.Array) -> jax.Array:
    """Each row's token from `packed_argmax_parts`' candidates: the smallest column holding the
    row's largest value, or its first NaN. [B, C] each -> int32 [B]."""
    nan = jnp.isnan(value)
    hits = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan,
                     value == jnp.max(value, axis=-1, keepdims=True))
    return jnp.min(jnp.where(hits, column, jnp.iinfo(jnp.int32).max), axis=-1)


def sample_tokens(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
    """logits [B, V] -> int32 tokens [B]."""
    if params.greedy:
        return greedy_tokens(logits)
    return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)
