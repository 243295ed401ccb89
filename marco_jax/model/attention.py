"""Attention kernels behind `Qwen2Config.attention_impl`, one function per implementation.

All take q [B, T, H, D] and k/v [B, S, K, D] with H a multiple of K (grouped-query attention:
query head h reads kv head h // (H / K)) and return [B, T, H, D]:
- `xla`: einsums with fp32 scores and an explicit [B, T, S] mask (on CPU, self-attention runs
  over causal query blocks, `causal_block_attention`). The only path that serves the KV cache
  (prefill and decode steps write at arbitrary slots of a left-padded cache), so decoding uses it
  whatever `attention_impl` says.
- `dot_product_attention`: `jax.nn.dot_product_attention` (XLA) with the same mask.
- `splash`: the Pallas TPU splash-attention kernel (block-sparse causal mask, segment ids for
  packed rows, GQA natively), under `shard_map` over the mesh: rows over the `batch` rule's axes
  (data x fsdp), heads over `tensor`. Never builds a [T, S] score matrix in HBM. Off TPU it runs
  in Pallas interpret mode (slow; what the CPU parity tests use).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on a CUDA GPU (bf16/fp16).

`auto` resolves per platform (`marco_jax.model.config.resolve_attention_impl`) for the platform
being traced (`marco_jax.model.target`: the AOT tool compiles TPU programs on a CPU host and must
get the TPU kernel, not interpret mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from marco_jax.model.config import resolve_attention_impl
from marco_jax.model.native import kernels_available
from marco_jax.model.target import target_platform
from marco_jax.parallel.rules import logical_to_spec

# Finite, so fully-masked rows (padding queries) give a uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Splash tiles; T must be a multiple of the block (512 as MaxText's default, smaller for short T).
SPLASH_BLOCKS = (512, 256, 128)
Q_AXES = ("batch", "length", "heads", "head_dim")
KV_AXES = ("batch", "length", "kv_heads", "head_dim")
# Query blocks of the CPU training path (`causal_block_attention`): at most this many, of at
# least this many queries. The layers unroll them: at T=512, 8 blocks of 64 compiled the
# layer-heavy fwd+bwd in 12.5 s vs 6.9 s for 4 of 128, and ran no faster (3.27 vs 3.31 s).
CPU_QUERY_BLOCKS = 8
CPU_MIN_QUERY_BLOCK = 128


def resolve(impl: str, dtype: jnp.dtype | str, seq_len: int) -> str:
    """The implementation `impl` means for this trace (resolves `auto`)."""
    return resolve_attention_impl(impl, target_platform(), str(jnp.dtype(dtype)), seq_len)


def attention_mask(q_segment: jax.Array, kv_segment: jax.Array, q_slot: jax.Array,
                   kv_slot: jax.Array) -> jax.Array:
    """[batch, q_len, kv_len] bool: same document, real key, and causal by slot index."""
    same_doc = q_segment[:, :, None] == kv_segment[:, None, :]
    causal = kv_slot[None, None, :] <= q_slot[None, :, None]
    return same_doc & (kv_segment[:, None, :] != 0) & causal


def self_attention_mask(segment_ids: jax.Array) -> jax.Array:
    slots = jnp.arange(segment_ids.shape[1])
    return attention_mask(segment_ids, segment_ids, slots, slots)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                  kv_heads_major: bool = False) -> jax.Array:
    """Grouped einsums, scores in fp32; mask [B, T, S]. k/v [B, S, K, D], or with
    `kv_heads_major` k [B*K, D, S] and v [B*K, S, D] (the CPU KV cache's layout: the matmuls
    then need no transposed copy)."""
    b, t, h, d = q.shape
    kv_heads = k.shape[0] // b if kv_heads_major else k.shape[2]
    qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
    if kv_heads_major:
        return _heads_major_attention(qg, k, v, mask)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


# Batch axes of the heads-major matmuls: (row, kv head) in the training blocks, one flat
# row * kv head axis over the decode cache.
_ROW_HEAD_BATCH = ((0, 1), (0, 1))
_FLAT_BATCH = ((0,), (0,))


def _heads_major_attention(qg: jax.Array, k: jax.Array, v: jax.Array,
                           mask: jax.Array) -> jax.Array:
    """`xla_attention` over a heads-major cache (k [B*K, D, S], v [B*K, S, D]) as two plain
    matmuls batched over (row, kv head), the group's queries [G*T] as rows. The einsum form
    left t and g as separate free axes and XLA:CPU ran its probs @ v as a strided Eigen dot:
    3.43 vs 0.67 ms per batch-8 decode step over 6 layers (2-core CPU, 255 slots). One flat
    batch axis, not (B, K): at one row XLA drops a size-1 batch axis, and the cache write
    feeding that squeezed view was duplicated, so every step copied each layer's K and V four
    times (`KVCache`)."""
    b, t, kv_heads, g, d = qg.shape
    s = v.shape[1]
    rows = _block_rows(qg.reshape(b, t, kv_heads * g, d), kv_heads).reshape(b * kv_heads, g * t, d)
    if t == 1 and uses_decode_attention_kernel(rows, k, v):
        out = decode_attention_kernel(rows, k, v, mask[:, 0])
        return _block_unrows(out.reshape(b, kv_heads, g, d), kv_heads * g)
    scores = _bdot(rows, k, 2, 1, _FLAT_BATCH) * (d ** -0.5)
    scores = jnp.where(mask[:, None, None], scores.reshape(b, kv_heads, g, t, s), MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b * kv_heads, g * t, s)
    out = jax.lax.dot_general(probs, v, (((2,), (1,)), _FLAT_BATCH))  # [B*K, G*T, D]
    return _block_unrows(out.reshape(b, kv_heads, g * t, d), kv_heads * g)


def uses_decode_attention_kernel(rows: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether a decode step's attention over the heads-major cache runs in the CPU kernel
    (`cpu_kernels/decode_attention.cc`): CPU target, float32 queries and cache, head_dim a
    multiple of 16, the kernels built (MARCO_CPU_KERNELS=0: XLA's path)."""
    return (target_platform() == "cpu" and rows.shape[-1] % 16 == 0
            and all(a.dtype == jnp.float32 for a in (rows, k, v)) and kernels_available())


def decode_attention_kernel(rows: jax.Array, k: jax.Array, v: jax.Array,
                            valid: jax.Array) -> jax.Array:
    """One query per row: rows [B*K, G, D] (row b's kv head's G query heads), k [B*K, D, S],
    v [B*K, S, D], valid [B, S] -> [B*K, G, D] float32, `_heads_major_attention`'s values (its
    scale and mask value; sums in another order, exp to about 1 ulp). XLA:CPU ran this as five
    small fusions a layer, 150-200 us at batch 8 over 256 slots on a 2-core CPU, reading every
    slot; the kernel reads the keys of 16-slot vectors holding a live slot and each live slot's
    value, once."""
    return jax.ffi.ffi_call("marco_decode_attention",
                            jax.ShapeDtypeStruct(rows.shape, jnp.float32))(
        rows, k, v, valid.astype(jnp.bool_), scale=np.float32(rows.shape[-1] ** -0.5),
        mask_value=np.float32(MASK_VALUE))


def decode_attention_writing(q: jax.Array, k: jax.Array, v: jax.Array, k_new: jax.Array,
                             v_new: jax.Array, slot: jax.Array, valid: jax.Array
                             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A decode step's attention that first writes the step's keys and values into the cache:
    q [B, 1, H, D], k [B*K, D, S] and v [B*K, S, D] (the CPU cache, updated in place), k_new
    [B*K, D, 1] and v_new [B*K, 1, D] (`to_heads_major`), slot [] (clamped, as
    `dynamic_update_slice` clamps), valid [B, S] -> (out [B, 1, H, D], k, v). The same values as
    that update followed by `_heads_major_attention`; XLA's update paid a cache miss per key
    (one per head dim and item) that the kernel's own pass over the keys then paid again. Only
    where `uses_decode_attention_kernel`."""
    b, t, h, d = q.shape
    kv_heads = k.shape[0] // b
    rows = _block_rows(q, kv_heads).reshape(b * kv_heads, h // kv_heads * t, d)
    out, k, v = jax.ffi.ffi_call(
        "marco_decode_attention_write",
        (jax.ShapeDtypeStruct(rows.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, k.dtype),
         jax.ShapeDtypeStruct(v.shape, v.dtype)),
        input_output_aliases={1: 1, 2: 2})(
        rows, k, v, k_new.reshape(b * kv_heads, d), v_new.reshape(b * kv_heads, d),
        jnp.asarray(slot, jnp.int32), valid.astype(jnp.bool_),
        scale=np.float32(d ** -0.5), mask_value=np.float32(MASK_VALUE))
    return _block_unrows(out.reshape(b, kv_heads, h // kv_heads, d), h), k, v


def _block_rows(x: jax.Array, kv_heads: int) -> jax.Array:
    """Queries [B, T', H, D] as rows [B, K, G*T', D]: per (row, kv head) the group's queries,
    the left operand of the heads-major batched matmuls."""
    b, t, h, d = x.shape
    g = h // kv_heads
    return jnp.transpose(x.reshape(b, t, kv_heads, g, d), (0, 2, 3, 1, 4)).reshape(
        b, kv_heads, g * t, d)


def _block_unrows(rows: jax.Array, num_heads: int) -> jax.Array:
    """[B, K, G*T', D] rows back to [B, T', H, D]."""
    b, kv_heads, gt, d = rows.shape
    g = num_heads // kv_heads
    t = gt // g
    return jnp.transpose(rows.reshape(b, kv_heads, g, t, d), (0, 3, 1, 2, 4)).reshape(
        b, t, num_heads, d)


def _bdot(x: jax.Array, y: jax.Array, x_contract: int, y_contract: int,
          batch: tuple = _ROW_HEAD_BATCH) -> jax.Array:
    """A matmul batched over `batch` (the leading (row, kv head) axes by default, one flat
    row * kv head axis with `_FLAT_BATCH`), products summed in float32."""
    return jax.lax.dot_general(x, y, (((x_contract,), (y_contract,)), batch),
                               preferred_element_type=jnp.float32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    segment_ids: jax.Array) -> jax.Array:
    """cuDNN flash attention; causal by cuDNN, packed rows by a same-document mask."""
    platform = target_platform()
    if platform not in ("gpu", "cuda"):
        raise ValueError(f"attention_impl='cudnn' needs a CUDA GPU; this trace targets "
                         f"{platform!r} (use 'auto', 'xla' or, on TPU, 'splash')")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention_impl='cudnn' needs a bfloat16/float16 compute dtype, got "
                         f"{q.dtype} (set model.dtype=bfloat16, or use 'xla')")
    same_doc = ((segment_ids[:, :, None] == segment_ids[:, None, :])
                & (segment_ids[:, None, :] != 0))
    return jax.nn.dot_product_attention(q, k, v, mask=same_doc[:, None], is_causal=True,
                                        implementation="cudnn")


def splash_block(seq_len: int, interpret: bool) -> int:
    for block in SPLASH_BLOCKS:
        if seq_len % block == 0:
            return block
    if interpret:  # interpret mode has no TPU tiling constraint: one block per row
        return seq_len
    raise ValueError(f"attention_impl='splash' needs a sequence length that is a multiple of "
                     f"{SPLASH_BLOCKS[-1]}, got {seq_len} (use 'xla' for this length)")


def make_splash_kernel(seq_len: int, num_heads: int, interpret: bool
                       ) -> splash.splash_attention_kernel.SplashAttentionKernel:
    """Causal splash kernel for one row: q [H, T, D], k/v [K, T, D] (GQA by head grouping)."""
    block = splash_block(seq_len, interpret)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * num_heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                  interpret: bool) -> jax.Array:
    """One shard: q [b, T, h, D], k/v [b, T, k, D], segment_ids [b, T]."""
    d = q.shape[-1]
    kernel = make_splash_kernel(q.shape[1], q.shape[2], interpret)
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [b, T, h, D] -> [b, h, T, D]
    qh = heads_major(q * jnp.asarray(d ** -0.5, q.dtype))

    def one_row(q_row, k_row, v_row, seg_row):
        return kernel(q_row, k_row, v_row, segment_ids=splash.SegmentIds(seg_row, seg_row))

    out = jax.vmap(one_row)(qh, heads_major(k), heads_major(v), segment_ids)
    return heads_major(out)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     segment_ids: jax.Array) -> jax.Array:
    """Causal self-attention (T == S) within documents of equal segment id. Padding (id 0)
    queries attend to padding keys only; their outputs carry no loss."""
    if q.shape[1] != k.shape[1]:
        raise ValueError("splash attention is self-attention only (decoding uses 'xla')")
    interpret = target_platform() != "tpu"
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.axis_names:
        return _splash_local(q, k, v, segment_ids, interpret)
    q_spec = logical_to_spec(Q_AXES, q.shape, mesh)
    kv_spec = logical_to_spec(KV_AXES, k.shape, mesh)
    if q_spec[2] != kv_spec[2]:  # kv heads not splittable as the query heads: keep heads whole
        q_spec = jax.sharding.PartitionSpec(*q_spec[:2], None, None)
        kv_spec = jax.sharding.PartitionSpec(*kv_spec[:2], None, None)
    seg_spec = jax.sharding.PartitionSpec(*q_spec[:2])
    local = lambda q, k, v, s: _splash_local(q, k, v, s, interpret)  # noqa: E731
    return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
           impl: str) -> jax.Array:
    """Causal self-attention of a packed batch (no cache) with implementation `impl`."""
    impl = resolve(impl, q.dtype, q.shape[1])
    if impl == "splash":
        return splash_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, segment_ids)
    if impl == "xla" and target_platform() == "cpu":
        return causal_block_attention(q, k, v, segment_ids)
    mask = self_attention_mask(segment_ids)
    if impl == "dot_product_attention":
        return dot_product_attention(q, k, v, mask)
    return xla_attention(q, k, v, mask)


def uses_causal_blocks(seq_len: int) -> bool:
    """Whether `attend(impl="xla")` runs `causal_block_attention` over more than one query
    block for this trace (CPU, and `seq_len` splits into blocks)."""
    return target_platform() == "cpu" and _causal_blocks(seq_len) > 1


def _cpu_query_block(seq_len: int) -> int:
    """Queries per block of `causal_block_attention`: all of them where `seq_len` does not
    split into blocks of the preferred size (one block: the plain matmuls, no causal saving)."""
    block = max(CPU_MIN_QUERY_BLOCK, -(-seq_len // CPU_QUERY_BLOCKS))
    return block if seq_len % block == 0 else seq_len


def _causal_blocks(seq_len: int) -> int:
    return seq_len // _cpu_query_block(seq_len)


def _causal_blocks_forward(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array):
    """`causal_block_attention`'s output and what its backward pass reads: per block the query
    rows, the unnormalised probabilities exp(s - max) and 1 / their row sums."""
    b, t, h, d = q.shape
    kv_heads, block = k.shape[2], _cpu_query_block(t)
    g = h // kv_heads
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, K, T, D]
    outs, saved = [], []
    for i in range(_causal_blocks(t)):
        start, end = i * block, (i + 1) * block
        rows = _block_rows(q[:, start:end], kv_heads)
        mask = attention_mask(segment_ids[:, start:end], segment_ids[:, :end],
                              jnp.arange(start, end), jnp.arange(end))
        scores = _bdot(rows, kh[:, :, :end], 3, 3) * (d ** -0.5)
        scores = jnp.where(mask[:, None, None], scores.reshape(b, kv_heads, g, block, end),
                           MASK_VALUE).reshape(b, kv_heads, g * block, end)
        probs = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        inv_sum = 1.0 / jnp.sum(probs, axis=-1, keepdims=True)
        probs = probs.astype(v.dtype)  # kept in the value dtype, as autodiff kept the softmax
        out = (_bdot(probs, vh[:, :, :end], 3, 2) * inv_sum).astype(q.dtype)
        outs.append(_block_unrows(out, h))
        saved.append((rows, probs, inv_sum, out))
    return jnp.concatenate(outs, axis=1), (kh, vh, saved)


@jax.custom_vjp
def causal_block_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                           segment_ids: jax.Array) -> jax.Array:
    """`xla_attention` over query blocks (`_cpu_query_block`), each against the keys up to its
    end only: the causal upper triangle of blocks is never computed (4 blocks at T=512 compute
    62.5% of the full score work), and the smaller score tiles stay in cache. k and v are laid
    out heads-major once ([B, K, T, D], as the decode cache), so every block is two plain
    batched matmuls on key/value prefixes as in `_heads_major_attention`; slicing the
    [B, T, H, D] layout per block had XLA:CPU transpose each block's key/value prefix again.

    Its own backward pass (the FlashAttention one, with the probabilities kept): the softmax is
    left unnormalised, exp(s - max), and 1 / row sum scales the [rows, D] output and the
    output gradient instead of the [rows, keys] probabilities; the gradient of the scores is one
    elementwise pass, p * (dO V^T - rowsum(dO * O)). Autodiff of the normalised softmax had
    XLA:CPU materialise a broadcast of the row sums and make three more passes over every score
    tile: 6-layer, 384-wide model at T=512, batch 8, layers fwd+bwd 3.05 -> 2.84 s (median of
    10, interleaved; `bench/bench_train_vs_torch.py`'s layer-heavy shape).

    Equal to `xla_attention` on every query with at least one visible key; a padding query
    (segment 0, no visible key, no loss) averages the values of its block's prefix instead."""
    return _causal_blocks_forward(q, k, v, segment_ids)[0]


def _causal_blocks_bwd(residuals, d_out):
    kh, vh, saved = residuals
    q_dtype = saved[0][0].dtype  # the query rows
    kv_heads, t, d = kh.shape[1:]
    h, block, scale = d_out.shape[2], _cpu_query_block(t), d ** -0.5
    dq_blocks, dk, dv = [], jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32)
    for i, (rows, probs, inv_sum, out) in enumerate(saved):
        end = (i + 1) * block
        d_rows = _block_rows(d_out[:, i * block:end], kv_heads)
        delta = jnp.sum(d_rows.astype(jnp.float32) * out, axis=-1, keepdims=True)
        d_probs = _bdot(d_rows, vh[:, :, :end], 3, 3)
        d_scores = (probs * inv_sum * (d_probs - delta)).astype(q_dtype)
        dq_blocks.append(_block_unrows(_bdot(d_scores, kh[:, :, :end], 3, 2) * scale, h))
        pad = ((0, 0), (0, 0), (0, t - end), (0, 0))
        dk = dk + jnp.pad(_bdot(d_scores, rows, 2, 2) * scale, pad)
        d_rows_scaled = (d_rows * inv_sum).astype(vh.dtype)
        dv = dv + jnp.pad(_bdot(probs, d_rows_scaled, 2, 2), pad)
    dq = jnp.concatenate(dq_blocks, axis=1).astype(q_dtype)
    dk = jnp.transpose(dk, (0, 2, 1, 3)).astype(kh.dtype)
    dv = jnp.transpose(dv, (0, 2, 1, 3)).astype(vh.dtype)
    return dq, dk, dv, None


causal_block_attention.defvjp(_causal_blocks_forward, _causal_blocks_bwd)


# Matmuls per visited [block, block] tile of each splash kernel: the forward does QK^T and PV; the
# dq kernel recomputes QK^T, then dP = dO V^T and dQ = dS K; the dkv kernel recomputes QK^T and
# dP and forms dV = P^T dO and dK = dS^T Q.
SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


def splash_cost(phase: str, seq_len: int, head_dim: int, itemsize: int) -> tuple[float, float]:
    """(FLOPs, HBM bytes) one splash kernel `phase` ("fwd", "dq", "dkv") spends per row and
    query head with the causal mask, beyond what XLA's cost analysis sees: XLA counts a Pallas
    call as zero FLOPs and its operands and results once. FLOPs: the matmuls of every visited
    (lower-triangular, diagonal included) block. Bytes: the streamed operand pair (K and V, or Q
    and dO for dkv) is re-read once per visited block instead of once per row: the extra
    (visited - blocks) tiles of 2 x [block, head_dim]."""
    block = splash_block(seq_len, interpret=True)
    n = seq_len // block
    visited = n * (n + 1) // 2
    flops = SPLASH_MATMULS[phase] * 2.0 * block * block * head_dim * visited
    extra_bytes = 2.0 * (visited - n) * block * head_dim * itemsize
    return flops, extra_bytes
