"""A marco_jax (Qwen2) model and the Qwen2 tokenizer, loaded on first use.

Shared by the perplexity scorer and the sentence encoder: both are built in a Beam worker's
`setup`, and the checkpoint should be read there once, not at pipeline construction time.
"""

from __future__ import annotations


class LazyMarcoModel:
    """`checkpoint`: a converted marco_jax checkpoint directory (local or gs://); or pass an
    already loaded `model` (tests, notebooks)."""

    def __init__(self, checkpoint: str | None = None, model=None):
        if checkpoint is None and model is None:
            raise ValueError("LazyMarcoModel: pass a checkpoint directory or a loaded model")
        self.checkpoint = checkpoint
        self._model, self._tokenizer = model, None

    @property
    def model(self):
        if self._model is None:
            from marco_jax.checkpoint import load_model

            self._model = load_model(self.checkpoint)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from marco_jax.data.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer()
        return self._tokenizer

