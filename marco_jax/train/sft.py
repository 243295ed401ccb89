"""The SFT objective: token-mean cross-entropy on assistant tokens, reported per language.

Batch (rows from `marco_jax.data.chat_records.pack_sft_rows`, or the packed pipeline with SFT
tasks): tokens/targets/positions/segment_ids [B,T] int32 (segment ids keep packed conversations
apart), loss_mask [B,T] (1 on targets that are assistant content or an assistant turn's
<|im_end|>), and, when the objective has a language list, language_ids [B,T] int32 (index into
it; -1 counts nowhere). `sums["weight"]` is the number of assistant target tokens, so the loop's
division gives the token mean over the whole global batch, whatever the packing. The loop adds
"loss_sum" (the returned loss, without gradient) to the sums that `metrics` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.logprobs import per_source_sums, weighted_nll_sum
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.parallel.constraints import RESIDUAL, constrain

TOKEN_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


class SFTObjective:
    """Objective protocol (`marco_jax.train.objective`) for supervised fine-tuning."""

    name = "sft"
    needs_reference = False

    def __init__(self, languages: Sequence[str] = (), loss_chunk: int = 0):
        self.languages = tuple(languages)
        self.loss_chunk = int(loss_chunk)
        self.batch_keys = TOKEN_KEYS + (("language_ids",) if self.languages else ())

    def loss(self, model: Qwen2ForCausalLM, batch: Mapping[str, jax.Array],
             reference: Qwen2ForCausalLM | None = None) -> tuple[jax.Array, dict]:
        hidden, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        hidden = constrain(hidden, RESIDUAL)
        mask = batch["loss_mask"].astype(jnp.float32)
        loss_sum, nll = weighted_nll_sum(hidden, model.lm_head_kernel(), batch["targets"], mask,
                                         self.loss_chunk, model.config.logits_dtype)
        sums = {"weight": jnp.sum(mask), "sequences": _count_sequences(batch["segment_ids"], mask)}
        if self.languages:
            sums["language_loss_sum"], sums["language_tokens"] = per_source_sums(
                nll, mask, batch["language_ids"], len(self.languages))
        return loss_sum, sums

    def metrics(self, sums: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, float]:
        weight = float(sums["weight"])
        out = {f"{prefix}loss": float(sums["loss_sum"]) / max(weight, 1.0),
               f"{prefix}target_tokens": weight, f"{prefix}sequences": float(sums["sequences"])}
        if self.languages and "language_tokens" in sums:
            for lang, total, n in zip(self.languages, np.asarray(sums["language_loss_sum"]),
                                      np.asarray(sums["language_tokens"]), strict=True):
                if n > 0:
                    out[f"{prefix}loss/{lang}"] = float(total) / float(n)
                    out[f"{prefix}target_tokens/{lang}"] = float(n)
        return out


def _count_sequences(segment_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Number of packed sequences with at least one loss token."""
    b, t = segment_ids.shape
    # Unique ids across rows: row r's segment s -> r * (t + 1) + s; padding -> one extra bucket.
    gid = jnp.where(segment_ids > 0, jnp.arange(b)[:, None] * (t + 1) + segment_ids, b * (t + 1))
    has_loss = jax.ops.segment_max(mask.reshape(-1), gid.reshape(-1),
                                   num_segments=b * (t + 1) + 1)
    return jnp.sum(jnp.maximum(has_loss[:-1], 0.0))
