"""Batched autoregressive decoding with a KV cache, compiled once per (shape, settings).

Prompts are LEFT-padded so every row's last prompt token sits in the same slot and the decode loop
writes one shared slot per step (see `marco_jax.model.kv_cache`). Positions restart at 0 on each
row's first real token (`cumsum(mask) - 1`, as Hugging Face's `generate` does), padding gets
segment id 0 so no query attends to it. One prefill fills the cache; a `lax.while_loop` then
decodes one token per step and stops as soon as every row has emitted a stop token. Rows that are
done emit `pad_id`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.infer.sampling import SamplingParams, packed_greedy_tokens, sample_tokens
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.packed_matmul import (
    PackedKernel,
    greedy_screen_available,
    pack_kernel,
    packed_dtype,
    screen_head,
    uses_packed_matmul,
)
from marco_jax.model.qwen2 import Qwen2ForCausalLM

T = TypeVar("T")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
    tokens: jax.Array  # [B, max_new_tokens] int32; pad_id after a row's stop token
    lengths: jax.Array  # [B] int32 tokens generated per row, the stop token included
    finished: jax.Array  # [B] bool, whether the row emitted a stop token


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 1
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to one length (rounded up to `multiple`, which bounds recompiles).
    Returns int32 (tokens [B, P], mask [B, P])."""
    if not sequences:
        raise ValueError("left_pad: no sequences given")
    empty = [i for i, s in enumerate(sequences) if len(s) == 0]
    if empty:
        raise ValueError(f"left_pad: sequences {empty} are empty; every prompt needs >= 1 token")
    longest = max(len(s) for s in sequences)
    width = -(-longest // multiple) * multiple
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return tokens, mask


def decode_head(graphdef: nnx.GraphDef, state: nnx.State, pack: bool = False,
                screen: bool = False) -> jax.Array | PackedKernel:
    """The lm head as decoding reads it, [embed, vocab] in the matmul dtype, or with `pack` as a
    `PackedKernel` (jit it: for a tied head it is a transposed copy of the embedding), with
    `screen` carrying greedy decoding's screen (pass `screens_head(model)`)."""
    model = nnx.merge(graphdef, state)
    head = model.lm_head_kernel()
    if not pack:
        return head
    packed = pack_kernel(head, dtype=packed_dtype(model.config.jnp_param_dtype))
    return screen_head(packed, head) if screen else packed


def screens_head(model: Qwen2ForCausalLM) -> bool:
    """Whether a packed head carries greedy decoding's screen (`packed_matmul.screen_head`): on a
    CPU with AMX tiles. It costs a bf16 copy of the head beside the packed one (float32 or bf16
    tiles), counted in `packs_head`'s budget."""
    return greedy_screen_available()


def decode_layers(graphdef: nnx.GraphDef, state: nnx.State, pack: bool = False
                  ) -> tuple[nnx.State, ...]:
    """Each decoder layer's params as separate arrays (jit it; `Qwen2ForCausalLM.layer_arrays`),
    with `pack` their Linear kernels packed."""
    return nnx.merge(graphdef, state).layer_arrays(pack)


def packs_weights(model: Qwen2ForCausalLM) -> bool:
    """Whether the decode layouts kept for `model` are packed for the CPU matmul kernel
    (`marco_jax.model.packed_matmul`: CPU, float32 matmuls, the kernel built), which takes
    unsharded weights: params on one device."""
    return (len(model.lm_head_source().sharding.device_set) == 1
            and uses_packed_matmul(model.config.jnp_matmul_dtype))


# The most of this host's memory a kept per-layer copy of the decoder params may take.
LAYER_COPY_MAX_RAM_FRACTION = 1 / 8
# cgroup v2, then v1: a container's memory limit (the host's RAM may be far larger).
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def host_memory_bytes(cgroup_limits: Sequence[Path] = _CGROUP_LIMITS) -> int | None:
    """Physical memory, or the container's memory limit where that is lower; None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for path in cgroup_limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit
            total = min(total, int(text))
    return total


@functools.cache
def _this_host_memory() -> int | None:
    """`host_memory_bytes()`, read once per process (every `generate` call asks)."""
    return host_memory_bytes()


def keeps_layer_copy(model: Qwen2ForCausalLM) -> bool:
    """Whether decoding keeps `decode_layers` between calls: on CPU, where the layers run over
    per-layer arrays (`Qwen2ForCausalLM.decode_weights`), in a single-process run (processes
    deciding from their own memory could compile different programs), and when the copy's bytes
    on this host (every addressable shard, replicas included) are at most
    `LAYER_COPY_MAX_RAM_FRACTION` of `host_memory_bytes()`. Otherwise every prefill and decode
    call slices the stacked params itself: measured on a 2-core CPU, a 128-token prefill of a
    6-layer, 384-wide model (52 MB of layer params) 59.0 -> 42.3 ms median with the copy kept;
    the slices were the whole XLA temporary of that call, faulted in afresh each time."""
    return _copy_fits(jax.tree.leaves(nnx.state(model.model.layers)), packs_weights(model))


def _copy_fits(sources: Sequence[jax.Array], packed: bool, extra_bytes: int = 0) -> bool:
    """`keeps_layer_copy` for a copy of these param arrays (in `packed_dtype` when `packed`) and
    `extra_bytes` more."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return False
    memory = _this_host_memory()
    if memory is None:
        return False
    copy_bytes = sum(shard.data.size * (packed_dtype(a.dtype) if packed else a.dtype).itemsize
                     for a in sources for shard in a.addressable_shards) + extra_bytes
    return copy_bytes <= LAYER_COPY_MAX_RAM_FRACTION * memory


_decode_head_jit = jax.jit(decode_head, static_argnums=(0, 2, 3))
_decode_layers_jit = jax.jit(decode_layers, static_argnums=(0, 2))
# model -> (weak references to the source arrays, a key, the derived arrays): decode layouts
# built once per params and reused by later calls on the same model.
_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def upcast_weights_warning(model: Qwen2ForCausalLM, setting: str) -> str | None:
    """One warning line where decoding on CPU converts the weights up on every call: XLA:CPU has
    no mixed-dtype matmul, so bf16 weights under fp32 matmuls decode on fp32 copies of every
    layer weight made per `generate` call (the compiled program's temporaries; qwen2-0.5b: 1.6 GB
    beside 1.0 GB of bf16 weights, more than fp32 weights alone; scoring calls convert too).
    `setting` names the option that avoids it. None where nothing is converted up, off CPU
    (there the convert fuses into the dot), and where decoding reads kept packed copies, which
    the CPU matmul kernel widens in registers (`packs_weights`, `keeps_layer_copy`)."""
    cfg = model.config
    if (jax.default_backend() != "cpu"
            or cfg.jnp_param_dtype.itemsize >= cfg.jnp_matmul_dtype.itemsize
            or (packs_weights(model) and keeps_layer_copy(model))):
        return None
    copy = cfg.jnp_matmul_dtype.itemsize * sum(
        a.size for a in jax.tree.leaves(nnx.state(model.model.layers)))
    return (f"warning: {cfg.param_dtype} weights with {cfg.jnp_matmul_dtype.name} matmuls on CPU:"
            f" every generate or scoring call makes a {cfg.jnp_matmul_dtype.name} copy of the "
            f"layer weights ({copy / 1e6:,.1f} MB here); {setting}={cfg.param_dtype} computes on "
            "the weights as stored (fastest on CPUs with AMX)")


def kept_derived(held: weakref.WeakKeyDictionary, owner: object, sources: list[jax.Array],
                 key: object, build: Callable[[], T]) -> T:
    """`build()`, or what it returned for the same `owner` (a model, an eval engine), `key` and
    source arrays. JAX arrays are immutable, so the same array objects mean the same values;
    replaced params (training, `nnx.update`) rebuild it."""
    entry = held.pop(owner, None)  # a stale value is released before its successor is built
    if (entry is not None and entry[1] == key and len(entry[0]) == len(sources)
            and all(ref() is src for ref, src in zip(entry[0], sources, strict=True))):
        held[owner] = entry
        return entry[2]
    value = build()
    held[owner] = ([weakref.ref(src) for src in sources], key, value)
    return value


def stored_decode_head(model: Qwen2ForCausalLM) -> jax.Array | None:
    """The head parameter itself where it is already the decode layout (untied, [embed, vocab],
    in the matmul dtype): nothing to build or keep. None otherwise."""
    source = model.lm_head_source()
    if model.lm_head is not None and source.dtype == model.config.jnp_matmul_dtype:
        return source
    return None


def packs_head(model: Qwen2ForCausalLM, also_kept: Sequence[jax.Array] = (),
               layer_params: Sequence[jax.Array] | None = None) -> bool:
    """Whether decoding reads a packed copy of the lm head: `packs_weights`, and the packed head,
    the packed layers and `also_kept` (other copies kept beside them) within the
    `keeps_layer_copy` memory budget together. `layer_params`: the decoder layers' param arrays
    where the caller has them (else a graph walk, ~0.5 ms of Python for 6 layers)."""
    if not packs_weights(model):
        return False
    if layer_params is None:
        layer_params = jax.tree.leaves(nnx.state(model.model.layers))
    head = model.lm_head_source()
    screen_bytes = 2 * head.size if screens_head(model) else 0  # bf16, ~padding
    return _copy_fits([head, *layer_params, *also_kept], packed=True, extra_bytes=screen_bytes)


def _head_for(model: Qwen2ForCausalLM, graphdef: nnx.GraphDef, state: nnx.State
              ) -> jax.Array | PackedKernel:
    """`decode_head`, computed once per head parameter array and reused by later calls on the
    same model: packed where `packs_head`, else the [embed, vocab] matrix (a tied head's
    transpose is a slow copy: 33 ms for tiny-20m's 151,936 x 128 embedding on a 2-core CPU, four
    times its 128-token prefill). Costs one head-sized array per live model whose head is packed,
    tied or stored in another dtype than the matmul dtype, and a bf16 copy of it beside a packed
    head where `screens_head`."""
    if packs_head(model, layer_params=jax.tree.leaves(state["model"]["layers"])):
        screen = screens_head(model)
        return kept_derived(_HEADS, model, [model.lm_head_source()], ("packed", screen),
                            lambda: _decode_head_jit(graphdef, state, True, screen))
    stored = stored_decode_head(model)
    if stored is not None:
        return stored
    return kept_derived(_HEADS, model, [model.lm_head_source()], model.config.jnp_matmul_dtype,
                        lambda: _decode_head_jit(graphdef, state))


def _layers_for(model: Qwen2ForCausalLM, graphdef: nnx.GraphDef, state: nnx.State
                ) -> tuple[nnx.State, ...] | None:
    """`decode_layers` kept between calls on the same params (`keeps_layer_copy`), or None. The
    copy lives as long as the model, until the next call after a params update replaces it.
    `state`: `nnx.split(model)`'s, whose layer params are the model's own arrays (one graph walk
    per call instead of three: each costs ~0.5 ms of Python for 6 layers)."""
    sources = jax.tree.leaves(state["model"]["layers"])
    pack = packs_weights(model)
    if not _copy_fits(sources, pack):
        return None
    return kept_derived(_LAYERS, model, sources, pack,
                        lambda: _decode_layers_jit(graphdef, state, pack))


def next_tokens(model: Qwen2ForCausalLM, hidden: jax.Array, head: jax.Array | PackedKernel,
                rng: jax.Array, sampling: SamplingParams, vocab_limit: int | None) -> jax.Array:
    """The next token of each row from its last hidden state [B, E] -> int32 [B], never an id >=
    `vocab_limit` (None: any). Greedy over a packed head runs the head and the argmax in one
    kernel pass, without the [B, vocab] logits (`packed_greedy_tokens`)."""
    if sampling.greedy and isinstance(head, PackedKernel):
        columns = head.out_features if vocab_limit is None else min(vocab_limit,
                                                                    head.out_features)
        if columns > 0:
            return packed_greedy_tokens(hidden, head, columns)
    logits = model.logits(hidden, head)
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    return sample_tokens(logits, rng, sampling)


def _decode(graphdef: nnx.GraphDef, state: nnx.State, head: jax.Array | PackedKernel,
            layers: tuple[nnx.State, ...] | None, tokens: jax.Array,
            mask: jax.Array, stop_ids: jax.Array, pad_id: jax.Array, rng: jax.Array, *,
            max_new_tokens: int, sampling: SamplingParams,
            vocab_limit: int | None) -> GenerateOutput:
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    mask = mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    lengths = mask.sum(axis=1)

    def is_stop(t: jax.Array) -> jax.Array:
        return jnp.any(t[:, None] == stop_ids[None, :], axis=1)

    # The last generated token is never fed back, so the cache needs one slot less.
    cache = KVCache.init(model.config, batch, prompt_len + max_new_tokens - 1)
    weights = model.decode_weights(head, layers)  # once, outside the loop
    hidden, cache = model.hidden(tokens, positions, mask, cache, weights.layers)
    rng, step_rng = jax.random.split(rng)
    # Only the last slot's logits: a [B, P, vocab] fp32 prefill tensor would dwarf the cache.
    # The kept decode head: contiguous, in the matmul dtype (read through the tied embedding, the
    # one-off bf16 product took XLA:CPU's float32 fallback: 13 ms of converts for tiny-20m).
    first = next_tokens(model, hidden[:, -1], head, step_rng, sampling, vocab_limit)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = is_stop(first)
    carry = (jnp.int32(1), out, cache, first, done, jnp.ones((batch,), jnp.int32), rng)

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, out, cache, last, done, n_out, rng = carry
        rng, step_rng = jax.random.split(rng)
        pos = (lengths + step - 1)[:, None]
        hidden, cache = model.hidden(last[:, None], pos, jnp.ones_like(pos), cache,
                                     weights.layers)
        nxt = next_tokens(model, hidden[:, 0], weights.head, step_rng, sampling, vocab_limit)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], step, axis=1)
        n_out = n_out + (~done).astype(jnp.int32)
        done = done | is_stop(nxt)
        return step + 1, out, cache, nxt, done, n_out, rng

    _, out, _, _, done, n_out, _ = jax.lax.while_loop(cond, body, carry)
    return GenerateOutput(tokens=out, lengths=n_out, finished=done)


_decode_jit = jax.jit(_decode, static_argnums=0, static_argnames=("max_new_tokens", "sampling",
                                                            "vocab_limit"))
# Stop ids travel as a fixed-size array padded with -1 (never a token), so changing them, or
# their number up to this many, reuses the compiled loop.
_STOP_SLOTS = 4


def _as_tuple(ids: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(ids, (int, np.integer)):
        return (int(ids),)
    return tuple(int(i) for i in ids)


def generate(model: Qwen2ForCausalLM, prompt_tokens: jax.Array | np.ndarray, max_new_tokens: int,
             *, prompt_mask: jax.Array | np.ndarray | None = None,
             prompt_lengths: jax.Array | np.ndarray | None = None, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, eos_ids: int | Sequence[int] | None = None,
             pad_id: int | None = None, rng: jax.Array | int = 0,
             vocab_limit: int | None = None) -> GenerateOutput:
    """Decode up to `max_new_tokens` tokens for each LEFT-padded prompt row.

    prompt_tokens: int [B, P]. Give either `prompt_mask` (1 on real tokens, which must be a
    suffix of each row) or `prompt_lengths` ([B]); neither means no padding.
    temperature 0 is greedy; top_k 0 / top_p 1.0 switch those filters off.
    eos_ids: stop token id(s); None means the model config's eos_token_id; () never stops early.
    pad_id: emitted after a row stopped; default the first stop id (0 without stop ids).
    rng: a jax PRNG key or an int seed (unused when greedy).
    vocab_limit: never emit ids >= this (e.g. the tokenizer's size: Qwen2's embedding table has
    unused padding rows beyond its 151,646 tokens).
    """
    tokens = np.asarray(prompt_tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"prompt_tokens shape {tokens.shape}; expected [batch, prompt_len>0]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    batch, width = tokens.shape
    if prompt_mask is not None and prompt_lengths is not None:
        raise ValueError("give prompt_mask or prompt_lengths, not both")
    if prompt_lengths is not None:
        lengths = np.asarray(prompt_lengths).reshape(-1)
        if lengths.shape != (batch,):
            raise ValueError(f"prompt_lengths shape {lengths.shape}; expected ({batch},)")
        mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int32)
    elif prompt_mask is not None:
        mask = np.asarray(prompt_mask).astype(np.int32)
        if mask.shape != tokens.shape:
            raise ValueError(f"prompt_mask shape {mask.shape} != prompt_tokens {tokens.shape}")
    else:
        mask = np.ones_like(tokens)
    if np.any(mask[:, 1:] < mask[:, :-1]):
        bad = np.nonzero(np.any(mask[:, 1:] < mask[:, :-1], axis=1))[0].tolist()
        raise ValueError(f"prompt rows {bad} are not left-padded (real tokens must be a suffix)")
    if np.any(mask[:, -1] == 0):
        bad = np.nonzero(mask[:, -1] == 0)[0].tolist()
        raise ValueError(f"prompt rows {bad} are empty; every prompt needs >= 1 token")
    limit, longest = model.config.max_position_embeddings, int(mask.sum(axis=1).max())
    if longest + max_new_tokens > limit:  # positions would run past what RoPE was trained on
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"the model's max_position_embeddings={limit}")
    stop = _as_tuple(model.config.eos_token_id if eos_ids is None else eos_ids)
    pad = pad_id if pad_id is not None else (stop[0] if stop else 0)
    key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    graphdef, state = nnx.split(model)
    stop_ids = np.full((max(_STOP_SLOTS, len(stop)),), -1, np.int32)
    stop_ids[:len(stop)] = stop
    # Host arrays go to the jitted call as they are: its C++ path transfers them.
    return _decode_jit(graphdef, state, _head_for(model, graphdef, state),
                       _layers_for(model, graphdef, state), tokens, mask,
                       stop_ids, np.int32(pad), key,
                       max_new_tokens=max_new_tokens, sampling=sampling, vocab_limit=vocab_limit)


__all__ = ["GenerateOutput", "decode_head", "decode_layers", "generate", "host_memory_bytes",
           "keeps_layer_copy", "kept_derived", "left_pad", "packs_head", "packs_weights",
           "screens_head", "stored_decode_head",
           "upcast_weights_warning"]
