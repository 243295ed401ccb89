"""Qwen2 decoder in Flax NNX, named like Hugging Face's `Qwen2ForCausalLM` to ease conversion.

Layout choices (one home for each; `convert/` maps HF tensors onto exactly these shapes):
- Linear kernels are stored input-major (`x @ kernel`), attention kernels split heads out:
  q_proj.kernel [embed, heads, head_dim], k/v_proj.kernel [embed, kv_heads, head_dim],
  o_proj.kernel [heads, head_dim, embed]. Splitting heads lets the sharding rules shard on whole
  heads rather than on a flattened heads*head_dim axis.
- Decoder layers are stored stacked: every layer parameter has a leading `layers` axis. The
  forward pass runs them with `jax.lax.scan` (fast compiles at 80 layers) or, with
  `scan_layers=False`, as an unrolled loop over the same stacked parameters, so the checkpoint
  layout never depends on that switch.
- Every parameter carries `logical_axes` metadata; `marco_jax.parallel` maps those names to mesh
  axes. Names: vocab, embed, heads, kv_heads, head_dim, mlp, layers, norm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from marco_jax.model.activations import silu_mul
from marco_jax.model.attention import (
    attend,
    attention_mask,
    decode_attention_writing,
    self_attention_mask,
    uses_causal_blocks,
    uses_decode_attention_kernel,
    xla_attention,
)
from marco_jax.model.config import Qwen2Config
from marco_jax.model.decode_layer import fused_decode_layer, uses_fused_decode_layer
from marco_jax.model.kv_cache import HEADS_MAJOR_SLOT_AXES, KVCache, to_heads_major
from marco_jax.model.matmul import dot_rows_padded, flat_matmul
from marco_jax.model.packed_matmul import (
    PackedKernel,
    pack_kernel,
    packed_dtype,
    packed_matmul,
    packed_matmul_group,
)
from marco_jax.model.target import target_platform
from marco_jax.parallel.constraints import RESIDUAL, constrain


def _param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], axes: tuple[str, ...],
           config: Qwen2Config, num_layers: int | None) -> nnx.Param:
    if num_layers is not None:
        shape, axes = (num_layers, *shape), ("layers", *axes)
    return nnx.Param(init(rngs.params(), shape, config.jnp_param_dtype), logical_axes=axes)


def _normal(stddev: float) -> Callable:
    return jax.nn.initializers.normal(stddev)


class Linear(nnx.Module):
    """`y = x @ kernel (+ bias)`, contracting the first `contract_dims` kernel axes with the
    last axes of x; the remaining kernel axes (e.g. heads, head_dim) are the output axes."""

    def __init__(self, kernel_shape: tuple[int, ...], axes: tuple[str, ...], config: Qwen2Config,
                 rngs: nnx.Rngs, *, contract_dims: int = 1, use_bias: bool = False,
                 num_layers: int | None = None):
        self.contract_dims = contract_dims
        self.kernel = _param(rngs, _normal(config.initializer_range), kernel_shape, axes, config,
                             num_layers)
        self.bias = (_param(rngs, jax.nn.initializers.zeros, kernel_shape[contract_dims:],
                            axes[contract_dims:], config, num_layers) if use_bias else None)
        self.dtype, self.matmul_dtype = config.jnp_dtype, config.jnp_matmul_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        kernel = self.kernel.value
        if isinstance(kernel, PackedKernel):  # CPU inference weights (`layer_arrays(pack=True)`)
            return linear_group(x, (self,))[0]
        if target_platform() == "cpu":  # one 2-D matmul, see marco_jax/model/matmul.py
            y = flat_matmul(x, kernel, self.contract_dims, self.matmul_dtype)
        else:
            contract = "abcd"[: self.contract_dims]
            out = "wxyz"[: kernel.ndim - self.contract_dims]
            mm = self.matmul_dtype
            y = jnp.einsum(f"...{contract},{contract}{out}->...{out}", x.astype(mm),
                           kernel.astype(mm),
                           preferred_element_type=None if mm == self.dtype else jnp.float32)
            y = y.astype(self.dtype)
        return self.add_bias(y)

    def add_bias(self, y: jax.Array) -> jax.Array:
        return y if self.bias is None else y + self.bias.value.astype(self.dtype)


def linear_group(x: jax.Array, linears: Sequence[Linear]) -> list[jax.Array]:
    """Each Linear of the same input x; where all their kernels are packed (CPU inference), in
    one kernel call (`packed_matmul_group`)."""
    kernels = [linear.kernel.value for linear in linears]
    if (not all(isinstance(k, PackedKernel) for k in kernels)
            or len({(linear.contract_dims, k.tiles.dtype) for linear, k
                    in zip(linears, kernels, strict=True)}) != 1):
        return [linear(x) for linear in linears]
    first = linears[0]
    x = x.astype(first.dtype)
    flat = x.reshape(*x.shape[: x.ndim - first.contract_dims], -1)
    return [linear.add_bias(y.astype(linear.dtype))
            for linear, y in zip(linears, packed_matmul_group(flat, kernels), strict=True)]


class Embed(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        self.embedding = _param(rngs, _normal(config.initializer_range),
                                (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                                config, None)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = self.embedding.value
        if table.dtype != jnp.float32 and target_platform() == "cpu":
            # XLA:CPU gathers bf16 through a float32 convert of the table, which fuses into the
            # gather (only the picked rows convert) unless the table is loop-invariant: in a
            # decode loop the convert of the whole table is hoisted and run once per `generate`
            # call (qwen2-0.5b: 545 MB of temporaries). Tying the table to the token ids keeps
            # it inside the loop.
            table, tokens = jax.lax.optimization_barrier((table, tokens))
        return jnp.take(table, tokens, axis=0)


class RMSNorm(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs, num_layers: int | None = None):
        self.scale = _param(rngs, jax.nn.initializers.ones, (config.hidden_size,), ("norm",),
                            config, num_layers)
        self.eps = config.rms_norm_eps
        self.dtype = config.jnp_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # As HF: normalise in fp32, cast back, then scale in the compute dtype.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale.value.astype(self.dtype) * x32.astype(self.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [batch, len, head_dim] in the rotate-half layout HF uses."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    if target_platform() == "cpu":
        # cos/sin before the concatenate: XLA:CPU then computes them once per forward, where it
        # fused cos(concat(...)) into every layer's q and k rotation and reran it per head (~1.5
        # ms per layer of a 1024-token prefill). Not on TPU: there the tables would be written
        # to HBM and read by every layer (splash step bytes +3.7% in the v5p roofline test).
        cos, sin = jnp.cos(freqs), jnp.sin(freqs)
        return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [batch, len, heads, head_dim]; rotate-half RoPE, matching HF without permuting weights."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs, num_layers: int | None = None):
        h, d = config.hidden_size, config.dim_per_head
        nh, nkv = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = Linear((h, nh, d), ("embed", "heads", "head_dim"), config, rngs,
                             use_bias=True, num_layers=num_layers)
        self.k_proj = Linear((h, nkv, d), ("embed", "kv_heads", "head_dim"), config, rngs,
                             use_bias=True, num_layers=num_layers)
        self.v_proj = Linear((h, nkv, d), ("embed", "kv_heads", "head_dim"), config, rngs,
                             use_bias=True, num_layers=num_layers)
        self.o_proj = Linear((nh, d, h), ("heads", "head_dim", "embed"), config, rngs,
                             contract_dims=2, num_layers=num_layers)
        self.head_dim, self.theta = d, config.rope_theta
        self.impl = config.attention_impl

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 cache_kv: tuple[jax.Array, jax.Array] | None, cache_segment_ids: jax.Array | None,
                 start: jax.Array | None, cache_heads_major: bool = False,
                 cache_fresh: bool = False
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """`cache_kv`: this layer's [B, S, K, D] cache, or with `cache_heads_major`
        (`KVCache.per_layer`) k [B*K, D, S] and v [B*K, S, D]; `cache_fresh`: it is empty
        (`KVCache.fresh`)."""
        q, k, v = linear_group(x, (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = checkpoint_name(q, "query_proj")
        k = checkpoint_name(k, "key_proj")
        v = checkpoint_name(v, "value_proj")
        if cache_kv is None:
            return self.o_proj(attend(q, k, v, segment_ids, self.impl)), None
        # KV cache (prefill / decode into a left-padded cache): the XLA path, whatever the impl.
        ck, cv = cache_kv
        # This call's keys and values rounded as the cache stores them, then in its layout.
        k_stored, v_stored = k.astype(ck.dtype), v.astype(cv.dtype)
        k_new, v_new = k_stored, v_stored
        k_axis, v_axis = 1, 1
        if cache_heads_major:
            k_new, v_new = to_heads_major(k_stored, v_stored)
            k_axis, v_axis = HEADS_MAJOR_SLOT_AXES
        # A one-token step over a filled CPU cache in the kernel, which writes this step's key
        # and value itself.
        kernel_writes = (cache_heads_major and not cache_fresh and x.shape[1] == 1
                         and uses_decode_attention_kernel(q, ck, cv))
        k, v = ck, cv
        if not kernel_writes:
            k = jax.lax.dynamic_update_slice_in_dim(ck, k_new, start, axis=k_axis)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v_new, start, axis=v_axis)
        # A fresh cache's only keys are this call's, at slots [0, T): self-attention's mask.
        if cache_fresh and cache_heads_major and not uses_causal_blocks(x.shape[1]):
            # The decode steps' two plain matmuls over the keys and values as the cache lays
            # them out. The einsum form had XLA:CPU transpose score-sized tensors and each
            # layer's output (layer-heavy batch-8 bf16 prefill of 128 tokens, 2-core CPU: 98 ->
            # 87 ms); one-block `causal_block_attention` ran at 108-110 ms there. Longer prompts
            # keep the causal query blocks: these matmuls per block on key prefixes ran no
            # faster (prefixes of keys-minor K are strided slices).
            out = xla_attention(q, k_new.astype(q.dtype), v_new.astype(q.dtype),
                                self_attention_mask(segment_ids), kv_heads_major=True)
        elif cache_fresh:
            out = attend(q, k_stored.astype(q.dtype), v_stored.astype(q.dtype), segment_ids,
                         "xla")
        else:
            mask = attention_mask(segment_ids, cache_segment_ids, start + jnp.arange(x.shape[1]),
                                  jnp.arange(v.shape[1]))
            if kernel_writes:
                out, k, v = decode_attention_writing(q, k, v, k_new, v_new, start, mask[:, 0])
            else:
                out = xla_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                    cache_heads_major)
        return self.o_proj(out), (k, v)


class MLP(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs, num_layers: int | None = None):
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear((h, f), ("embed", "mlp"), config, rngs, num_layers=num_layers)
        self.up_proj = Linear((h, f), ("embed", "mlp"), config, rngs, num_layers=num_layers)
        self.down_proj = Linear((f, h), ("mlp", "embed"), config, rngs, num_layers=num_layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = linear_group(x, (self.gate_proj, self.up_proj))
        if target_platform() == "cpu":  # one pass each way (marco_jax/model/activations.py)
            return self.down_proj(silu_mul(gate, up))
        return self.down_proj(jax.nn.silu(gate) * up)


class DecoderLayer(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs, num_layers: int | None = None):
        self.input_layernorm = RMSNorm(config, rngs, num_layers)
        self.self_attn = Attention(config, rngs, num_layers)
        self.post_attention_layernorm = RMSNorm(config, rngs, num_layers)
        self.mlp = MLP(config, rngs, num_layers)

    def __call__(self, x, cos, sin, segment_ids, cache_kv, cache_segment_ids, start,
                 cache_heads_major=False, cache_fresh=False):
        if cache_heads_major and not cache_fresh and cache_kv is not None:
            fused = self.fused_decode_step(x, cos, sin, segment_ids, cache_kv,
                                           cache_segment_ids, start)
            if fused is not None:
                return fused
        attn, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, segment_ids,
                                         cache_kv, cache_segment_ids, start, cache_heads_major,
                                         cache_fresh)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache

    def fused_decode_step(self, x, cos, sin, segment_ids, cache_kv, cache_segment_ids, start):
        """This layer's one-token step over a filled heads-major CPU cache in one kernel call
        (`marco_jax.model.decode_layer`), or None where that does not apply."""
        attn, mlp = self.self_attn, self.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj,
                   mlp.up_proj, mlp.down_proj)
        k_cache, v_cache = cache_kv
        if not uses_fused_decode_layer(x, [lin.kernel.value for lin in linears],
                                       [lin.bias for lin in linears], k_cache, v_cache):
            return None
        valid = attention_mask(segment_ids, cache_segment_ids, start + jnp.arange(1),
                               jnp.arange(v_cache.shape[1]))[:, 0]
        q, k, v, o, gate, up, down = (lin.kernel.value for lin in linears)
        out, k_cache, v_cache = fused_decode_layer(
            x, self.input_layernorm.scale.value, q, k, v, attn.q_proj.bias.value,
            attn.k_proj.bias.value, attn.v_proj.bias.value, cos, sin, k_cache, v_cache, start,
            valid, o, self.post_attention_layernorm.scale.value, gate, up, down,
            self.input_layernorm.eps)
        return out, (k_cache, v_cache)


def _remat(fn: Callable, policy: str, scanned: bool) -> Callable:
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
            "query_proj", "key_proj", "value_proj"),
    }
    # Under scan, XLA cannot CSE the recompute away, so prevent_cse's barriers only cost speed;
    # unrolled layers need them or the rematerialisation is optimised out.
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=not scanned)


class Qwen2Model(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config, rngs)
        self.layers = DecoderLayer(config, rngs, num_layers=config.num_hidden_layers)
        self.norm = RMSNorm(config, rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 cache: KVCache | None = None,
                 layer_states: Sequence[nnx.State] | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """`layer_states`: each layer's params as separate arrays (`DecodeWeights`); the layers
        then run unrolled over them instead of over the stacked params."""
        cfg = self.config
        x = constrain(self.embed_tokens(tokens).astype(cfg.jnp_dtype), RESIDUAL)
        cos, sin = rope_cos_sin(positions, cfg.dim_per_head, cfg.rope_theta)
        graphdef, stacked = nnx.split(self.layers)

        if cache is None:
            cache_segment_ids, start = None, None
        else:
            start = cache.end
            cache_segment_ids = jax.lax.dynamic_update_slice_in_dim(
                cache.segment_ids, segment_ids.astype(jnp.int32), start, axis=1)

        per_layer_cache = cache is not None and cache.per_layer
        fresh_cache = cache is not None and cache.fresh

        def one_layer(h, layer_state, layer_kv):
            # The residual stream is pinned at every layer boundary (identity without a mesh).
            layer = nnx.merge(graphdef, layer_state)
            h, kv = layer(constrain(h, RESIDUAL), cos, sin, segment_ids, layer_kv,
                          cache_segment_ids, start, per_layer_cache, fresh_cache)
            return constrain(h, RESIDUAL), kv

        one_layer = _remat(one_layer, cfg.remat_policy, cfg.scan_layers)

        if cfg.scan_layers and layer_states is None and not per_layer_cache:
            layer_kvs = None if cache is None else (cache.k, cache.v)

            def body(h, xs):
                layer_state, layer_kv = xs
                return one_layer(h, layer_state, layer_kv)
            # XLA:CPU copies each scanned layer's residuals into stacked buffers; the same scan
            # unrolled runs ~8% faster there (bench/bench_train_vs_torch.py). Accelerators, and
            # remat (whose recompute XLA could CSE away unrolled), keep the rolled loop.
            unroll = (cfg.num_hidden_layers
                      if target_platform() == "cpu" and cfg.remat_policy == "none" else 1)
            x, new_kvs = jax.lax.scan(body, x, (stacked, layer_kvs), unroll=unroll)
        else:
            outs = []
            for i in range(cfg.num_hidden_layers):
                pick = lambda a, i=i: a[i]  # noqa: E731
                kv_i = None if cache is None else (cache.k[i], cache.v[i])
                state_i = (jax.tree.map(pick, stacked) if layer_states is None
                           else layer_states[i])
                x, kv = one_layer(x, state_i, kv_i)
                outs.append(kv)
            if cache is None:
                new_kvs = None
            elif per_layer_cache:
                new_kvs = tuple(zip(*outs, strict=True))  # ((k per layer), (v per layer))
            else:
                new_kvs = jax.tree.map(lambda *a: jnp.stack(a), *outs)

        x = self.norm(x)
        if cache is None:
            return x, None
        new_cache = KVCache(k=new_kvs[0], v=new_kvs[1], segment_ids=cache_segment_ids,
                            end=cache.end + tokens.shape[1])
        return x, new_cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeWeights:
    """`Qwen2ForCausalLM.decode_weights()`: the lm head [embed, vocab] (or packed) and, where it
    pays, per-layer params (None: the layers scan over the stacked params)."""
    head: jax.Array | PackedKernel
    layers: tuple[nnx.State, ...] | None


class Qwen2ForCausalLM(nnx.Module):
    """Qwen2 causal LM. `__call__` gives fp32 logits; `hidden` + `lm_head_kernel` serve the chunked
    loss so the [tokens, vocab] logits never need to exist at once during training."""

    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        self.config = config
        self.model = Qwen2Model(config, rngs)
        if not config.tie_word_embeddings:
            self.lm_head = Linear((config.hidden_size, config.vocab_size), ("embed", "vocab"),
                                  config, rngs)
        else:
            self.lm_head = None

    def lm_head_kernel(self) -> jax.Array:
        """[embed, vocab] in the matmul dtype (the compute dtype unless `matmul_dtype`; the tied
        embedding, transposed, when tied). The head matmuls round hidden states to its dtype."""
        dtype = self.config.jnp_matmul_dtype
        if self.lm_head is None:
            return self.model.embed_tokens.embedding.value.T.astype(dtype)
        return self.lm_head.kernel.value.astype(dtype)

    def logits(self, hidden: jax.Array, head: jax.Array | PackedKernel | None = None
               ) -> jax.Array:
        """fp32 logits; `head` [embed, vocab] defaults to `lm_head_kernel()`, whose dtype the
        hidden states are rounded to, or is that kernel packed (`decode_head(pack=True)`)."""
        if isinstance(head, PackedKernel):
            return packed_matmul(hidden.astype(jnp.float32), head)
        head = self.lm_head_kernel() if head is None else head
        hidden = hidden.astype(head.dtype)
        if target_platform() == "cpu":  # 2-D, one bf16 row padded (marco_jax/model/matmul.py)
            rows = dot_rows_padded(hidden.reshape(-1, hidden.shape[-1]), head)
            return rows.reshape(*hidden.shape[:-1], head.shape[-1])
        return jnp.einsum("...e,ev->...v", hidden, head, preferred_element_type=jnp.float32)

    def hidden(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: KVCache | None = None,
               layer_states: Sequence[nnx.State] | None = None
               ) -> tuple[jax.Array, KVCache | None]:
        """`layer_states`: `layer_arrays()` built earlier (see `decode_weights`)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        return self.model(tokens, positions, segment_ids, cache, layer_states)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """tokens/positions/segment_ids [batch, len] -> logits [batch, len, vocab] (fp32).
        segment_ids: documents packed in a row get distinct ids; 0 marks padding."""
        hidden, _ = self.hidden(tokens, positions, segment_ids)
        return self.logits(hidden)

    def layer_arrays(self, pack: bool = False) -> tuple[nnx.State, ...]:
        """Each decoder layer's params as separate arrays: a copy of the stacked params, one
        `nnx.State` per layer, for `hidden(layer_states=...)` and `decode_weights(layers=...)`.
        `pack`: every Linear kernel as a `PackedKernel` (float32, or bf16 as stored; CPU
        inference, no gradient: marco_jax/model/packed_matmul.py)."""
        graphdef, stacked = nnx.split(self.model.layers)
        layers = []
        for i in range(self.config.num_hidden_layers):
            state = jax.tree.map(lambda a, i=i: a[i], stacked)
            if pack:
                layer = nnx.merge(graphdef, state)
                for _, module in nnx.iter_modules(layer):
                    if isinstance(module, Linear):
                        kernel = module.kernel.value
                        module.kernel.value = pack_kernel(kernel, module.contract_dims,
                                                          packed_dtype(kernel.dtype))
                state = nnx.state(layer)
            layers.append(state)
        return tuple(layers)

    def decode_weights(self, head: jax.Array | PackedKernel | None = None,
                       layers: Sequence[nnx.State] | None = None) -> DecodeWeights:
        """Loop-invariant weight layouts for `decode_step`, built once before a decode loop: the
        lm head as a contiguous [embed, vocab] matrix (a tied head is the embedding transposed;
        read in place every step, it is a transposed GEMV: 1.95 vs 1.29 ms at batch 1 on a 2-core
        CPU, vocab 32,000 x 384) and, on CPU, each layer's params as separate arrays (XLA:CPU
        copies a slice of the stacked params before every matmul, i.e. the whole model per step).
        `head`: `lm_head_kernel()` computed earlier (the transpose is a slow copy: callers that
        decode repeatedly with the same params keep it, see `marco_jax.infer.generate`).
        `layers`: `layer_arrays()` computed earlier, likewise (else sliced here, on CPU).
        """
        if layers is None and target_platform() == "cpu":
            layers = self.layer_arrays()
        return DecodeWeights(head=self.lm_head_kernel() if head is None else head,
                             layers=None if layers is None else tuple(layers))

    def lm_head_source(self) -> jax.Array:
        """The parameter array `lm_head_kernel()` is derived from (the embedding when tied)."""
        if self.lm_head is None:
            return self.model.embed_tokens.embedding.value
        return self.lm_head.kernel.value

    def decode_step(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                    cache: KVCache, weights: DecodeWeights | None = None
                    ) -> tuple[jax.Array, KVCache]:
        """Prefill (len > 1) or one decoding step; writes k/v at slots [cache.end, +len).
        `weights`: `decode_weights()`, computed outside the decode loop."""
        layers, head = (None, None) if weights is None else (weights.layers, weights.head)
        hidden, cache = self.model(tokens, positions, segment_ids, cache, layers)
        return self.logits(hidden, head), cache


def init_model(config: Qwen2Config, seed: int = 0) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(config, nnx.Rngs(params=seed))
