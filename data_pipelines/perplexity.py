"""Pluggable perplexity scoring for the perplexity filter.

Spec strings (CLI `--perplexity_model`):
  kenlm:/dir        one KenLM model per language, `/dir/{lang}.arpa.bin` (or .arpa), as in CCNet;
                    needs the `kenlm` package. Perplexity per CCNet: 10^(-log10 p / words).
  marco_jax:/ckpt   a converted marco_jax checkpoint (Qwen2); perplexity = exp(mean token NLL)
                    over the first `max_tokens` Qwen2 tokens (EOS-prefixed, so the first token
                    is scored too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class PerplexityScorer(Protocol):
    def perplexity(self, text: str, lang: str) -> float: ...


class KenLMScorer:
    def __init__(self, model_dir: str):
        self.model_dir = Path(model_dir)
        self._models: dict[str, object] = {}

    def _model(self, lang: str):
        if lang not in self._models:
            try:
                import kenlm
            except ImportError as e:
                raise ImportError("kenlm:... perplexity scoring needs the `kenlm` package") from e
            for name in (f"{lang}.arpa.bin", f"{lang}.binary", f"{lang}.arpa"):
                if (self.model_dir / name).is_file():
                    self._models[lang] = kenlm.Model(str(self.model_dir / name))
                    break
            else:
                raise FileNotFoundError(f"no KenLM model for {lang!r} in {self.model_dir} "
                                        f"(expected {lang}.arpa.bin, {lang}.binary or {lang}.arpa)")
        return self._models[lang]

    def perplexity(self, text: str, lang: str) -> float:
        model = self._model(lang)
        log10, words = 0.0, 0
        for line in text.split("\n"):
            if line.strip():
                log10 += model.score(line, bos=True, eos=True)
                words += len(line.split()) + 1
        return 10.0 ** (-log10 / max(words, 1))


class MarcoJaxScorer:
    """Qwen2 perplexity with a marco_jax model (any size; a small one is the practical choice)."""

    def __init__(self, checkpoint: str | None = None, model=None, max_tokens: int = 512):
        self.checkpoint, self.max_tokens = checkpoint, max_tokens
        self._model, self._fn = model, None

    def _setup(self):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from marco_jax.data.tokenizer import get_tokenizer

        if self._model is None:
            from marco_jax.convert.checkpoint import load_model

            self._model = load_model(self.checkpoint)
        self._tok = get_tokenizer()
        graphdef, state = nnx.split(self._model)

        @jax.jit
        def nll(state, tokens, mask):
            model = nnx.merge(graphdef, state)
            logits = model(tokens[:, :-1]).astype(jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            tok_lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            m = mask[:, 1:]
            return -(tok_lp * m).sum() / jnp.maximum(m.sum(), 1)

        self._state, self._fn = state, nll

    def perplexity(self, text: str, lang: str) -> float:
        import math

        import numpy as np

        if self._fn is None:
            self._setup()
        ids = [self._tok.eos_id, *self._tok.encode(text)[: self.max_tokens]]
        # Pad to a power of two so jit compiles a handful of shapes, not one per document.
        length = 1 << max(3, (len(ids) - 1).bit_length())
        tokens = np.zeros((1, length), np.int32)
        mask = np.zeros((1, length), np.float32)
        tokens[0, : len(ids)] = ids
        mask[0, : len(ids)] = 1.0
        return float(math.exp(float(self._fn(self._state, tokens, mask))))


def make_scorer(spec: str) -> PerplexityScorer:
    kind, _, path = spec.partition(":")
    if kind == "kenlm" and path:
        return KenLMScorer(path)
    if kind == "marco_jax" and path:
        return MarcoJaxScorer(path)
    raise ValueError(
        f"--perplexity_model={spec!r}: expected 'kenlm:/dir' or 'marco_jax:/checkpoint'")
