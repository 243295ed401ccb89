"""Sentence encoders for bitext similarity, and LASER-style margin scoring.

Encoder specs (CLI `--encoder`):
  marco_jax:/ckpt   mean-pooled final hidden states of a marco_jax (Qwen2) checkpoint
  ngram             hashed character 3-gram vectors: lexical only, for tests and near-copy checks
  py:module:attr    any object/factory with `encode(list[str]) -> np.ndarray [n, d]`
All encoders return L2-normalised rows, so dot products are cosines.
"""

from __future__ import annotations

import functools
import hashlib
import importlib

import numpy as np

from data_pipelines.marco_model import LazyMarcoModel


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class NgramEncoder:
    def __init__(self, dim: int = 2048, n: int = 3):
        self.dim, self.n = dim, n

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            t = f" {t.lower()} "
            for j in range(max(1, len(t) - self.n + 1)):
                h = hashlib.blake2b(t[j:j + self.n].encode(), digest_size=4).digest()
                out[i, int.from_bytes(h, "little") % self.dim] += 1.0
        return _l2(out)


def _mean_hidden(graphdef, state, tokens, segment_ids):
    """Mean over each row's non-padding positions (segment_ids > 0) of the final-norm hidden
    states: [B, T] -> [B, embed] fp32."""
    import jax.numpy as jnp
    from flax import nnx

    hidden, _ = nnx.merge(graphdef, state).hidden(tokens, segment_ids=segment_ids)
    m = (segment_ids > 0).astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class MarcoJaxEncoder:
    """Mean of the final-norm hidden states over a sentence's first `max_tokens` Qwen2 tokens
    (an empty sentence is encoded as the end-of-text token)."""

    def __init__(self, checkpoint: str | None = None, model=None, max_tokens: int = 128,
                 batch_size: int = 32):
        self.lazy = LazyMarcoModel(checkpoint, model)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self._fn = None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._fn is None:
            import jax
            from flax import nnx

            graphdef, self._state = nnx.split(self.lazy.model)
            self._fn = jax.jit(functools.partial(_mean_hidden, graphdef))
        tok = self.lazy.tokenizer
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = [tok.encode(t)[: self.max_tokens] or [tok.eos_id]
                     for t in texts[start:start + self.batch_size]]
            # A power-of-two length: jit compiles a handful of shapes, not one per batch.
            length = 1 << max(3, (max(map(len, batch)) - 1).bit_length())
            tokens = np.zeros((self.batch_size, length), np.int32)
            seg = np.zeros((self.batch_size, length), np.int32)
            for i, ids in enumerate(batch):
                tokens[i, : len(ids)] = ids
                seg[i, : len(ids)] = 1
            out.append(np.asarray(self._fn(self._state, tokens, seg))[: len(batch)])
        return _l2(np.concatenate(out)) if out else np.zeros((0, 1), np.float32)


def make_encoder(spec: str):
    kind, _, rest = spec.partition(":")
    if spec == "ngram":
        return NgramEncoder()
    if kind == "marco_jax" and rest:
        return MarcoJaxEncoder(rest)
    if kind == "py" and ":" in rest:
        module, attr = rest.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) or callable(obj) and not hasattr(obj, "encode") \
            else obj
    raise ValueError(f"--encoder={spec!r}: expected 'marco_jax:/ckpt', 'ngram' or "
                     "'py:module:attr'")


def margin_scores(src_emb: np.ndarray, tgt_emb: np.ndarray, k: int = 4) -> np.ndarray:
    """Ratio margin (Artetxe & Schwenk 2019) of each aligned pair i within the block:
    cos(x_i, y_i) / (mean_{z in kNN_tgt(x_i)} cos(x_i, z) / 2
                     + mean_{z in kNN_src(y_i)} cos(y_i, z) / 2).
    Neighbours are searched among all targets (resp. sources) of the block, brute force."""
    n = len(src_emb)
    if n == 0:
        return np.zeros(0, np.float32)
    k = max(1, min(k, n))
    sim = src_emb @ tgt_emb.T  # [n, n] cosines
    fwd = -np.sort(-sim, axis=1)[:, :k].mean(1)  # x_i's k nearest targets
    bwd = -np.sort(-sim, axis=0)[:k, :].mean(0)  # y_i's k nearest sources
    return np.diag(sim) / np.maximum((fwd + bwd) / 2, 1e-6)
