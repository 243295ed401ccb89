"""The causal-LM objective of continual pretraining: token-mean cross-entropy on `loss_mask`
tokens, with per-source (per-language) loss as the forgetting monitor.

The loss is computed chunk-wise over the sequence with the fused cross-entropy of
`marco_jax.model.logprobs` (its gradient comes out of the forward pass), so [tokens, vocab]
logits never exist at once. Per-source figures are token-weighted over a logging window or an
eval pass: loss = sum(nll) / tokens of that source, perplexity = exp(loss).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.logprobs import per_source_sums, weighted_nll_sum
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.parallel.constraints import RESIDUAL, constrain
from marco_jax.train.objective import Batch, Sums

LM_BATCH_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask", "source_ids")


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class LanguageModeling:
    """CPT: next-token cross-entropy on every `loss_mask` target (SFT masks non-assistant
    tokens out of `loss_mask`). `source_names` label `source_ids` (mixture tasks)."""

    name = "lm"
    batch_keys = LM_BATCH_KEYS
    needs_reference = False

    def __init__(self, source_names: Sequence[str] = (), loss_chunk: int = 0):
        self.source_names = list(source_names)
        self.loss_chunk = loss_chunk

    def loss(self, model: Qwen2ForCausalLM, batch: Batch,
             reference: Qwen2ForCausalLM | None = None) -> tuple[jax.Array, Sums]:
        del reference
        hidden, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        # Rows stay split over data x fsdp into the loss (else XLA may gather the batch to match
        # the fsdp-split lm-head kernel); identity without a mesh.
        hidden = constrain(hidden, RESIDUAL)
        mask = batch["loss_mask"].astype(jnp.float32)
        loss_sum, nll = weighted_nll_sum(hidden, model.lm_head_kernel(), batch["targets"], mask,
                                         self.loss_chunk, model.config.logits_dtype)
        sums = {"weight": jnp.sum(mask)}
        if self.source_names:
            sums["source_loss_sum"], sums["source_tokens"] = per_source_sums(
                nll, mask, batch["source_ids"], len(self.source_names))
        return loss_sum, sums

    def metrics(self, sums: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, float]:
        tokens = float(sums["weight"])
        if tokens <= 0:
            return {}
        loss = float(sums["loss_sum"]) / tokens
        out = {f"{prefix}loss": loss, f"{prefix}tokens": tokens}
        if prefix:
            out[f"{prefix}ppl"] = perplexity(loss)
        if self.source_names and "source_loss_sum" in sums:
            kind = prefix or "train_"
            for name, s, n in zip(self.source_names, np.asarray(sums["source_loss_sum"]),
                                  np.asarray(sums["source_tokens"]), strict=True):
                if n > 0:
                    out[f"{kind}loss/{name}"] = float(s / n)
                    out[f"{kind}ppl/{name}"] = perplexity(float(s / n))
        return out
