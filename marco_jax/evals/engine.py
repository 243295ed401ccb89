"""The evaluation engine: batched continuation log-likelihoods, rolling (perplexity)
log-likelihoods and generation with stop strings, compiled for a handful of shapes.

Scoring. A request (context, continuation) becomes inputs = (context + continuation)[:-1] scored
on the continuation's targets (lm-evaluation-harness's layout: inputs longer than `max_len` lose
context from the left). Sequences are sorted by length and packed as segments of fixed-width rows
(segment ids 1, 2, ..; positions restart at 0; 0 marks padding), rows a length bucket wide,
`batch_size` rows per batch, so a suite compiles one program per bucket. Results come back in
request order.

Generation. Prompts are left-padded to a bucket; one prefill fills the KV cache, then decoding
runs in compiled chunks of `decode_chunk` tokens; between chunks the host decodes the text so far
and marks rows whose text holds a stop string, and decoding ends when every row is done (stop
string, end-of-text, or max_new_tokens). The text is cut at the earliest stop string, as
lm-eval does.

Parallelism. With a `mesh`, params are sharded by the logical-axis rules and batch rows split
over the mesh's data axes; on several hosts each process feeds and computes its rows of every
global batch and the per-token results are gathered (`process_allgather`). Without a mesh on
several processes, each process runs its share of the batches and the fixed-size result arrays
are gathered. On one process both are no-ops.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from marco_jax.data.tokenizer import Qwen2Tokenizer, get_tokenizer
from marco_jax.evals.batching import Batch, normalize_buckets, plan_batches
from marco_jax.infer.generate import (
    decode_head,
    decode_layers,
    keeps_layer_copy,
    kept_derived,
    next_tokens,
    packs_head,
    packs_weights,
    screens_head,
    stored_decode_head,
)
from marco_jax.infer.sampling import SamplingParams
from marco_jax.infer.text import prompt_ids, stop_ids
from marco_jax.model.kv_cache import KVCache
from marco_jax.model.logprobs import target_logprobs
from marco_jax.model.packed_matmul import PackedKernel
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.parallel.constraints import trace_under_mesh
from marco_jax.parallel.rules import data_parallel_size, logical_to_sharding, logical_to_spec

TokenRequest = tuple[Sequence[int], Sequence[int]]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int
                    ) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (`get_rolling_token_windows` with context_len=1, then
    `make_disjoint_window`): (context, continuation) pairs whose continuations tile `tokens`;
    the first token is conditioned on `prefix_token`, each later window on up to `max_len`
    preceding tokens."""
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix_token] + tokens[:first - 1], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        windows.append((tokens[max(end - max_len - 1, 0):end - 1], tokens[end - n:end]))
        done += n
    return [(ctx[:len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any (non-empty) stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def _token_logprobs(graphdef: nnx.GraphDef, state: nnx.State, head: jax.Array | None,
                    layers: tuple[nnx.State, ...] | None, tokens: jax.Array,
                    positions: jax.Array, segment_ids: jax.Array, scored: jax.Array,
                    targets: jax.Array, *, chunk: int) -> tuple[jax.Array, jax.Array]:
    """(log p(target), target is the argmax), [G, K] each. Rows come in G groups (one per
    data-parallel shard, so groups stay where their rows are); `scored` [G, K] lists slots of the
    group's flattened rows. Only those slots go through the lm head: with a 152k vocabulary the
    head dominates small models' cost, and for multiple choice the continuation is a fraction of
    each row. `head` / `layers`: the engine's kept layouts (`Engine._kept_layouts`), or None
    to derive them from the params in the call."""
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden(tokens, positions, segment_ids, layer_states=layers)
    groups = scored.shape[0]
    b, t, e = hidden.shape
    hidden = hidden.reshape(groups, (b // groups) * t, e)
    hidden = jnp.take_along_axis(hidden, scored[..., None], axis=1)
    return target_logprobs(hidden, model.lm_head_kernel() if head is None else head, targets,
                           chunk)


def _round_up_coarse(n: int) -> int:
    """The smallest 2^k or 3 * 2^(k-2) >= n: at most a third of padding, two shapes per octave."""
    power = 1 << max(0, (n - 1).bit_length())
    return 3 * power // 4 if power >= 4 and 3 * power // 4 >= n else power


def _prefill(graphdef: nnx.GraphDef, state: nnx.State, head: jax.Array | PackedKernel,
             layers: tuple[nnx.State, ...] | None, tokens: jax.Array,
             mask: jax.Array, seed: jax.Array, *, cache_len: int, sampling: SamplingParams,
             vocab_limit: int | None) -> tuple[jax.Array, KVCache]:
    model = nnx.merge(graphdef, state)
    key = jax.random.key(seed)
    # Positions restart at 0 on each row's first real token (as transformers' generate does).
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = KVCache.init(model.config, tokens.shape[0], cache_len)
    hidden, cache = model.hidden(tokens, positions, mask, cache,
                                 model.decode_weights(head, layers).layers)
    first = next_tokens(model, hidden[:, -1], head, jax.random.fold_in(key, 0), sampling,
                        vocab_limit)
    return first, cache


def _decode_chunk(graphdef: nnx.GraphDef, state: nnx.State, head: jax.Array | PackedKernel,
                  layers: tuple[nnx.State, ...] | None, cache: KVCache,
                  last: jax.Array, lengths: jax.Array, done: jax.Array, step: jax.Array,
                  seed: jax.Array, stop_token_ids: jax.Array, pad_id: jax.Array, *, steps: int,
                  sampling: SamplingParams, vocab_limit: int | None
                  ) -> tuple[jax.Array, KVCache, jax.Array, jax.Array]:
    """Up to `steps` more tokens; `step` = tokens generated so far (`last` is token step-1).
    Returns (tokens [B, steps], cache, last token, done)."""
    model = nnx.merge(graphdef, state)
    key = jax.random.key(seed)
    out = jnp.full((last.shape[0], steps), pad_id, jnp.int32)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < steps) & ~jnp.all(done)

    weights = model.decode_weights(head, layers)  # once, outside the loop

    def body(carry):
        i, cache, last, done, out = carry
        pos = (lengths + step + i - 1)[:, None]
        hidden, cache = model.hidden(last[:, None], pos, jnp.ones_like(pos), cache,
                                     weights.layers)
        nxt = next_tokens(model, hidden[:, 0], weights.head, jax.random.fold_in(key, step + i),
                          sampling, vocab_limit)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1)
        done = done | jnp.any(nxt[:, None] == stop_token_ids[None, :], axis=1)
        return i + 1, cache, nxt, done, out

    _, cache, last, done, out = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, last, done,
                                                                out))
    return out, cache, last, done


# engine -> its kept decode layouts (`Engine._kept_layouts`), its packed generation head
# (`Engine._generation_head`).
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PACKED_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Engine:
    """Batched, bucketed log-likelihood and generation for one model (see the module doc)."""

    def __init__(self, model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer | None = None, *,
                 batch_size: int = 16, max_len: int = 2048,
                 length_buckets: Sequence[int] = (128, 256, 512, 1024, 2048),
                 mesh: Mesh | None = None, pack: bool = True, logits_tokens: int = 4096,
                 decode_chunk: int = 32, vocab_limit: int | None = -1):
        """batch_size: rows per compiled batch (rounded up to a multiple of the mesh's data
        parallelism). max_len: the longest input scored or prompt+generation; buckets above it
        are dropped and it becomes the last bucket. pack: several short sequences per row.
        logits_tokens: rows x sequence chunk whose fp32 logits may exist at once while scoring.
        vocab_limit: never generate ids >= this; -1 means the tokenizer's size (Qwen2's embedding
        table has padding rows past its 151,646 tokens), None means no limit."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer()
        self.max_len = int(max_len)
        self.buckets = normalize_buckets(length_buckets, self.max_len)
        self.pack = pack
        self.logits_tokens = logits_tokens
        self.decode_chunk = decode_chunk
        self.vocab_limit = self.tokenizer.vocab_size if vocab_limit == -1 else vocab_limit
        self.mesh = mesh
        graphdef, state = nnx.split(model)
        if mesh is not None:
            state = jax.device_put(state, logical_to_sharding(state, mesh))
            dp = data_parallel_size(mesh)
            batch_size = -(-batch_size // dp) * dp
        self._groups = 1 if mesh is None else dp
        self.batch_size = batch_size
        self._graphdef, self._state = graphdef, state
        self._score = jax.jit(trace_under_mesh(_token_logprobs, mesh), static_argnums=(0,),
                              static_argnames=("chunk",))
        self._prefill = jax.jit(trace_under_mesh(_prefill, mesh), static_argnums=(0,),
                                static_argnames=("cache_len", "sampling", "vocab_limit"))
        self._decode_chunk = jax.jit(trace_under_mesh(_decode_chunk, mesh), static_argnums=(0,),
                                     static_argnames=("steps", "sampling", "vocab_limit"),
                                     donate_argnums=(4,))
        # Weight layouts built on first use and kept (`_kept_layouts`).
        self._decode_head = jax.jit(trace_under_mesh(decode_head, mesh), static_argnums=(0, 2, 3))
        self._decode_layers = jax.jit(trace_under_mesh(decode_layers, mesh),
                                      static_argnums=(0, 2))

    def _kept_layouts(self) -> tuple[jax.Array, tuple[nnx.State, ...] | None]:
        """(lm head, per-layer params or None), built on first use and kept for every later
        prefill, decode chunk and (on CPU) scoring batch: the head as `decode_head` (a tied head
        is a transposed copy of the embedding), the layers as `decode_layers` where
        `keeps_layer_copy` allows (on CPU, within a memory budget; else each call slices the
        stacked params itself), their Linear kernels packed where `packs_weights` (the CPU
        matmul kernel, for scoring and generation alike). Rebuilt when the engine's params
        arrays change (`nnx.update` on the model it was built from, without a mesh). See
        `marco_jax.infer.generate`."""
        return kept_derived(_LAYOUTS, self, jax.tree.leaves(self._state),
                            self.mesh is None and packs_weights(self.model), self._build_layouts)

    def _build_layouts(self) -> tuple[jax.Array, tuple[nnx.State, ...] | None]:
        model = nnx.merge(self._graphdef, self._state)
        head = stored_decode_head(model)
        if head is None:
            head = self._decode_head(self._graphdef, self._state, False)
        layers = (self._decode_layers(self._graphdef, self._state, packs_weights(model))
                  if keeps_layer_copy(model) else None)
        return head, layers

    def _generation_head(self, head: jax.Array) -> jax.Array | PackedKernel:
        """The head generation reads: packed where `packs_head` (built on the first generation
        and kept beside the scoring head, whose many rows XLA's dot serves as well; the memory
        budget counts both heads and the layers), else `head`, the kept scoring head."""
        model = nnx.merge(self._graphdef, self._state)
        source = model.lm_head_source()
        if self.mesh is not None or not packs_head(
                model, [] if head is source else [head],
                jax.tree.leaves(self._state["model"]["layers"])):
            return head
        screen = screens_head(model)
        return kept_derived(_PACKED_HEADS, self, [source], ("packed", screen),
                            lambda: self._decode_head(self._graphdef, self._state, True, screen))

    # -- plumbing: placing inputs, gathering outputs, splitting work over processes -------------
    def _put(self, array: np.ndarray) -> jax.Array:
        """A host array whose first axis is batch rows, placed for the computation."""
        if self.mesh is None:
            return jnp.asarray(array)
        axes = ("batch",) + (None,) * (array.ndim - 1)
        sharding = NamedSharding(self.mesh, logical_to_spec(axes, array.shape, self.mesh))
        return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])

    def _get(self, tree: Any) -> Any:
        """Device results -> full host numpy arrays on every process."""
        if jax.process_count() > 1 and self.mesh is not None:
            return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def _my_batches(self, batches: list[Batch]) -> list[int]:
        """Indices of the batches this process runs: all of them with a mesh (each process
        computes its rows of every global batch); otherwise a round-robin share."""
        if self.mesh is not None or jax.process_count() == 1:
            return list(range(len(batches)))
        return list(range(jax.process_index(), len(batches), jax.process_count()))

    def _merge_shares(self, arrays: dict[str, np.ndarray], mine: np.ndarray) -> dict:
        """Without a mesh on several processes: combine each process's rows (`mine` marks them)
        of fixed-size per-request arrays."""
        if self.mesh is not None or jax.process_count() == 1:
            return arrays
        gathered = multihost_utils.process_allgather({"mine": mine, **arrays})
        owner = np.argmax(gathered["mine"], axis=0)  # [n]: the process that computed each item
        take = lambda a: np.take_along_axis(  # noqa: E731
            a, owner.reshape((1, -1) + (1,) * (a.ndim - 2)), axis=0)[0]
        return {k: take(gathered[k]) for k in arrays}

    @staticmethod
    def _bar(total: int, desc: str, unit: str, progress: bool) -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True,
                    smoothing=0.1)

    # -- log-likelihood ---------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's tokenisation of a request: trailing spaces of the context move to the
        continuation; the pair is encoded whole and split at the context's length; an empty
        context becomes <|endoftext|>."""
        eot = self.tokenizer.eos_id
        if context == "":
            cont = self.tokenizer.encode(continuation)
            return ([eot], cont) if not cont or cont[0] != eot else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, ctx = self.tokenizer.encode_batch([context + continuation, context])
        return ctx, whole[len(ctx):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]], progress: bool = False
                      ) -> list[tuple[float, bool]]:
        """(context, continuation) strings -> (sum log-prob of continuation, is_greedy)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests],
                                         progress=progress)

    def loglikelihood_tokens(self, requests: Sequence[TokenRequest], progress: bool = False
                             ) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum log-prob of continuation, is_greedy: every
        continuation token is the argmax). An empty context is conditioned on <|endoftext|>."""
        logprobs, greedy = self._score_tokens(requests, progress, "loglikelihood")
        return [(float(lp), bool(g)) for lp, g in zip(logprobs, greedy, strict=True)]

    def loglikelihood_rolling(self, texts: Sequence[str], progress: bool = False) -> list[float]:
        """Whole-text log-likelihood (lm-eval's rolling windows when longer than max_len; first
        token conditioned on <|endoftext|>)."""
        windows, owner = [], []
        for i, ids in enumerate(self.tokenizer.encode_batch(list(texts))):
            for window in rolling_windows(ids, self.tokenizer.eos_id, self.max_len):
                windows.append(window)
                owner.append(i)
        logprobs, _ = self._score_tokens(windows, progress, "rolling")
        totals = np.zeros(len(texts), np.float64)
        np.add.at(totals, np.asarray(owner, np.int64), logprobs)
        return [float(t) for t in totals]

    def _score_tokens(self, requests: Sequence[TokenRequest], progress: bool, desc: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        # Identical requests are scored once (multiple-choice suites repeat them).
        unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        index = []
        seqs: list[tuple[list[int], list[int], int]] = []  # (inputs, targets, n_continuation)
        for i, (context, continuation) in enumerate(requests):
            key = (tuple(context), tuple(continuation))
            if key not in unique:
                unique[key] = len(seqs)
                seqs.append(self._row_sequence(i, list(context), list(continuation)))
            index.append(unique[key])
        n = len(seqs)
        logprob = np.zeros(n, np.float64)
        greedy = np.zeros(n, bool)
        mine = np.zeros(n, bool)
        batches = plan_batches([len(s[0]) for s in seqs], batch_size=self.batch_size,
                               buckets=self.buckets, pack=self.pack)
        with self._bar(n, desc, "seq", progress) as bar:
            for b in self._my_batches(batches):
                batch = batches[b]
                self._run_score_batch(batch, seqs, logprob, greedy)
                done = [i for row in batch.rows for i in row]
                mine[done] = True
                bar.update(len(done))
        merged = self._merge_shares({"logprob": logprob, "greedy": greedy}, mine)
        index = np.asarray(index, np.int64)
        return merged["logprob"][index], merged["greedy"][index]

    def _row_sequence(self, i: int, context: list[int], continuation: list[int]
                      ) -> tuple[list[int], list[int], int]:
        if not continuation:
            raise ValueError(f"request {i}: empty continuation; nothing to score")
        if len(continuation) > self.max_len:
            raise ValueError(f"request {i}: continuation of {len(continuation)} tokens does not "
                             f"fit max_len={self.max_len}")
        full = (context or [self.tokenizer.eos_id]) + continuation
        full = full[-(self.max_len + 1):]
        return full[:-1], full[1:], len(continuation)

    def _run_score_batch(self, batch: Batch, seqs: list, logprob: np.ndarray,
                         greedy: np.ndarray) -> None:
        rows, width, groups = self.batch_size, batch.width, self._groups
        per_group = rows // groups
        tokens = np.zeros((rows, width), np.int32)
        segments = np.zeros((rows, width), np.int32)
        positions = np.zeros((rows, width), np.int32)
        scored: list[list[int]] = [[] for _ in range(groups)]  # slots sent to the lm head
        group_targets: list[list[int]] = [[] for _ in range(groups)]
        spans = []  # (seq index, group, start, end) in the group's scored slots
        for r, members in enumerate(batch.rows):
            g, base = divmod(r, per_group)
            base *= width
            at = 0
            for seg, s in enumerate(members, start=1):
                inputs, tgt, n_cont = seqs[s]
                end = at + len(inputs)
                tokens[r, at:end] = inputs
                segments[r, at:end] = seg
                positions[r, at:end] = np.arange(len(inputs))
                spans.append((s, g, len(scored[g]), len(scored[g]) + n_cont))
                scored[g] += range(base + end - n_cont, base + end)
                group_targets[g] += tgt[-n_cont:]
                at = end
        k = _round_up_coarse(max(8, max(len(x) for x in scored)))
        chunk = max(1, min(k, 2 ** int(math.log2(max(1, self.logits_tokens // groups)))))
        k = -(-k // chunk) * chunk
        select = np.zeros((groups, k), np.int32)
        targets = np.zeros((groups, k), np.int32)
        for g in range(groups):
            select[g, :len(scored[g])] = scored[g]
            targets[g, :len(scored[g])] = group_targets[g]
        # On CPU the kept layouts save a copy per batch; on accelerators scoring derives them in
        # the call as before (generation, if it ran, keeps its own head there).
        head, layers = self._kept_layouts() if jax.default_backend() == "cpu" else (None, None)
        lp, is_max = self._get(self._score(
            self._graphdef, self._state, head, layers, self._put(tokens), self._put(positions),
            self._put(segments), self._put(select), self._put(targets), chunk=chunk))
        for s, g, start, end in spans:
            logprob[s] = float(lp[g, start:end].sum(dtype=np.float32))
            greedy[s] = bool(is_max[g, start:end].all())

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                 chat: bool = False, system: str | None = None, progress: bool = False
                 ) -> list[str]:
        """Continuations cut at the first stop string (not included). Plain prompts stop at
        <|endoftext|>, chat prompts (ChatML user turns) also at <|im_end|>."""
        ids = [prompt_ids(self.tokenizer, p, chat=chat, system=system) for p in prompts]
        return self.generate_tokens(ids, max_new_tokens=max_new_tokens, stop=stop,
                                    temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                    stop_token_ids=stop_ids(self.tokenizer, chat),
                                    progress=progress)[1]

    def generate_tokens(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                        stop: Sequence[str] = (), temperature: float = 0.0, top_p: float = 1.0,
                        top_k: int = 0, seed: int = 0,
                        stop_token_ids: Sequence[int] | None = None, progress: bool = False
                        ) -> tuple[list[list[int]], list[str]]:
        """Token-level `generate`: returns (generated ids per prompt, the stop token excluded;
        their text cut at the earliest stop string). Prompts lose tokens from the left to fit
        max_len - max_new_tokens."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
        room = self.max_len - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"max_len={self.max_len}")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs >= 1 token")
        prompts = [list(p)[-room:] for p in prompts]
        stop_tokens = tuple(stop_token_ids if stop_token_ids is not None
                            else (self.tokenizer.eos_id,))
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
        batches = plan_batches([len(p) for p in prompts], batch_size=self.batch_size,
                               buckets=self.buckets, pack=False)
        n = len(prompts)
        out = np.full((n, max_new_tokens), -1, np.int32)
        mine = np.zeros(n, bool)
        with self._bar(n, "generate", "prompt", progress) as bar:
            for b in self._my_batches(batches):
                members = [row[0] for row in batches[b].rows]
                tokens = self._generate_batch([prompts[i] for i in members], batches[b].width,
                                              max_new_tokens, stop, sampling, seed + 7919 * b,
                                              stop_tokens)
                for i, row in zip(members, tokens, strict=False):
                    out[i, :len(row)] = row
                mine[members] = True
                bar.update(len(members))
        out = self._merge_shares({"tokens": out}, mine)["tokens"]
        ids = [row[row >= 0].tolist() for row in out]
        texts = [cut_at_stops(self._decode(row), stop) for row in ids]
        return ids, texts

    def _decode(self, ids: Sequence[int]) -> str:
        vocab = self.tokenizer.vocab_size
        return self.tokenizer.decode([i for i in ids if i < vocab])

    def _generate_batch(self, prompts: list[list[int]], width: int, max_new_tokens: int,
                        stop: Sequence[str], sampling: SamplingParams, seed: int,
                        stop_tokens: tuple[int, ...]) -> list[list[int]]:
        """Generated ids (stop token excluded) per prompt of one batch."""
        rows, real = self.batch_size, len(prompts)
        pad_id = self.tokenizer.eos_id
        tokens = np.full((rows, width), pad_id, np.int32)
        mask = np.zeros((rows, width), np.int32)
        for r in range(rows):
            p = prompts[r] if r < real else prompts[0][-1:]  # filler rows: a one-token prompt
            tokens[r, width - len(p):], mask[r, width - len(p):] = p, 1
        steps = self.decode_chunk
        n_chunks = -(-(max_new_tokens - 1) // steps)
        cache_len = width + n_chunks * steps
        seed = np.uint32(seed % 2**32)
        stop_arr = np.full((max(4, len(stop_tokens)),), -1, np.int32)
        stop_arr[:len(stop_tokens)] = stop_tokens
        head, layers = self._kept_layouts()
        head = self._generation_head(head)
        first, cache = self._prefill(self._graphdef, self._state, head, layers,
                                     self._put(tokens), self._put(mask), seed, cache_len=cache_len,
                                     sampling=sampling, vocab_limit=self.vocab_limit)
        first = self._get(first)
        generated = [[int(t)] for t in first[:real]]
        done = np.arange(rows) >= real
        ended = np.zeros(rows, bool)  # emitted a stop token
        for r in range(real):
            ended[r] = generated[r][-1] in stop_tokens
            done[r] = ended[r] or self._hit_stop(generated[r], stop)
        last, lengths = self._put(first.astype(np.int32)), self._put(mask.sum(axis=1))
        step = 1
        while step < max_new_tokens and not done.all():
            chunk, cache, last, _ = self._decode_chunk(
                self._graphdef, self._state, head, layers, cache, last, lengths,
                self._put(done),
                np.int32(step), seed, stop_arr, np.int32(pad_id), steps=steps,
                sampling=sampling, vocab_limit=self.vocab_limit)
            chunk = self._get(chunk)
            take = min(steps, max_new_tokens - step)
            for r in range(real):
                if done[r]:
                    continue
                for t in chunk[r, :take].tolist():
                    generated[r].append(t)
                    if t in stop_tokens:
                        ended[r] = True
                        break
                done[r] = ended[r] or self._hit_stop(generated[r], stop)
            step += steps
        return [g[:-1] if e else g for g, e in zip(generated, ended[:real], strict=False)]

    def _hit_stop(self, ids: list[int], stop: Sequence[str]) -> bool:
        if not any(stop):
            return False
        text = self._decode(ids)
        return any(s and s in text for s in stop)

