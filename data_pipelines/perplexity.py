"""Pluggable perplexity scoring for the perplexity filter.

Spec strings (CLI `--perplexity_model`):
  kenlm:/dir        one KenLM model per language, `/dir/{lang}.arpa.bin` (or .arpa), as in CCNet;
                    needs the `kenlm` package. Perplexity per CCNet: 10^(-log10 p / words).
  marco_jax:/ckpt   a converted marco_jax checkpoint (Qwen2); perplexity = exp(mean token NLL)
                    over the first `max_tokens` Qwen2 tokens (EOS-prefixed, so the first token
                    is scored too), scored by marco_jax.infer.score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

from data_pipelines.marco_model import LazyMarcoModel


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
    """Qwen2 perplexity with a marco_jax model (any size; a small one is the practical choice).

    Each token of the text's first `max_tokens` is scored given those before it and an
    end-of-text token in front, by `marco_jax.infer.score` (the code behind the perplexity and
    multiple-choice evals); rows are padded to a multiple of `pad_multiple` tokens so a run
    compiles max_tokens / pad_multiple shapes at most."""

    def __init__(self, checkpoint: str | None = None, model=None, max_tokens: int = 512,
                 pad_multiple: int = 64):
        self.lazy = LazyMarcoModel(checkpoint, model)
        self.max_tokens, self.pad_multiple = max_tokens, pad_multiple

    def perplexity(self, text: str, lang: str) -> float:
        from marco_jax.infer.score import score_requests

        tok = self.lazy.tokenizer
        ids = tok.encode(text)[: self.max_tokens]
        if not ids:
            raise ValueError(f"perplexity of a text with no tokens ({text!r}); only non-empty "
                             "documents can be scored")
        [result] = score_requests(self.lazy.model, [([tok.eos_id], ids)], batch_size=1,
                                  pad_multiple=self.pad_multiple)
        return math.exp(-result.logprob / len(ids))


def make_scorer(spec: str) -> PerplexityScorer:
    kind, _, path = spec.partition(":")
    if kind == "kenlm" and path:
        return KenLMScorer(path)
    if kind == "marco_jax" and path:
        return MarcoJaxScorer(path)
    raise ValueError(
        f"--perplexity_model={spec!r}: expected 'kenlm:/dir' or 'marco_jax:/checkpoint'")
