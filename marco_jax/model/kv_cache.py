"""A functional KV cache for prefill + incremental decoding.

Slots are shared across the batch: row b's token at slot s was written at the same step for every
row, which holds for left-padded batches. `segment_ids` marks which slots hold a real token
(0 = empty or padding), so attention masks both padding and not-yet-written slots.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from marco_jax.model.config import Qwen2Config


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = empty slot
    end: jax.Array  # [] int32, number of slots written so far

    @classmethod
    def init(cls, config: Qwen2Config, batch: int, max_len: int,
             dtype: jnp.dtype | None = None) -> KVCache:
        shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads,
                 config.dim_per_head)
        dtype = dtype or config.jnp_dtype
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   segment_ids=jnp.zeros((batch, max_len), jnp.int32),
                   end=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]
