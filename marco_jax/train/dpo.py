"""The DPO objective: preference losses on per-sequence log-probs of packed chosen/rejected pairs.

Batch layout: `marco_jax.data.preference` (pairs as segments of rows, per-row pair slots
[B, P]). Each sequence's log-prob is the sum over its answer tokens (`loss_mask`) of
log p(target), computed chunk-wise without [tokens, vocab] logits (`model.logprobs.token_nll`,
differentiable), then summed per segment. With rewards r = beta * (logp - logp_ref) and
delta = (logp_c - ref_c) - (logp_r - ref_r), the per-pair losses (TRL 1.16's formulas):

  sigmoid  -(1 - eps) log sigma(beta delta) - eps log sigma(-beta delta)   (eps: conservative
           DPO label smoothing, Mitchell 2023; eps = 0 is DPO, = TRL "sigmoid")
  robust   (-(1 - eps) log sigma(beta delta) + eps log sigma(-beta delta)) / (1 - 2 eps)
  hinge    relu(1 - beta delta)                                             (SLiC)
  ipo      ((logp_c - ref_c) / n_c - (logp_r - ref_r) / n_r - 1 / (2 beta))^2, n = answer
           tokens (TRL's length-normalised IPO)

plus `sft_weight` x the chosen answer's mean token NLL (RPO-style; per pair, so it adds over
micro-batches; TRL's "sft" term is the batch token mean instead, equal when answers have equal
length). Reference log-probs: "precomputed" (batch keys ref_chosen_logps/ref_rejected_logps,
see `reference_logps.py`), "model" (a frozen reference passed to `loss`), or "none"
(reference-free: ref = 0). `sums["weight"]` = number of pairs; every figure is a sum over pairs
(or per language) so windows and micro-batches combine by addition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.model.logprobs import token_nll
from marco_jax.model.qwen2 import Qwen2ForCausalLM
from marco_jax.parallel.constraints import RESIDUAL, constrain

LOSSES = ("sigmoid", "robust", "hinge", "ipo")
REFERENCES = ("precomputed", "model", "none")
TOKEN_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")
PAIR_KEYS = ("chosen_segment", "rejected_segment")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
# Per-pair statistics summed into `sums` (and, per language, into `<name>_by_language`).
PAIR_STATS = ("loss", "rewards_chosen", "rewards_rejected", "margins", "correct",
              "logps_chosen", "logps_rejected")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    reference: str = "precomputed"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"dpo.loss={self.loss!r}; expected one of {LOSSES}")
        if self.reference not in REFERENCES:
            raise ValueError(f"dpo.reference={self.reference!r}; expected one of {REFERENCES}")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta={self.beta}; expected > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing={self.label_smoothing}; expected in [0, 0.5)")
        if self.label_smoothing and self.loss not in ("sigmoid", "robust"):
            raise ValueError(f"dpo.label_smoothing applies to the sigmoid/robust losses, not "
                             f"{self.loss!r}")
        if self.sft_weight < 0:
            raise ValueError(f"dpo.sft_weight={self.sft_weight}; expected >= 0")


def segment_logps(model: Qwen2ForCausalLM, batch: Mapping[str, jax.Array], num_segments: int,
                  chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of answer-token log-probs, answer-token count) per segment, each [B, num_segments+1]
    (index 0 = padding). Differentiable in the model's parameters."""
    hidden, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
    hidden = constrain(hidden, RESIDUAL)
    logp = -token_nll(hidden, model.lm_head_kernel(), batch["targets"], chunk,
                      model.config.logits_dtype)
    mask = batch["loss_mask"].astype(jnp.float32)
    onehot = jax.nn.one_hot(batch["segment_ids"], num_segments + 1, dtype=jnp.float32)
    return (jnp.einsum("bt,bts->bs", logp * mask, onehot),
            jnp.einsum("bt,bts->bs", mask, onehot))


def preference_losses(config: DPOConfig, chosen: jax.Array, rejected: jax.Array,
                      ref_chosen: jax.Array, ref_rejected: jax.Array, chosen_tokens: jax.Array,
                      rejected_tokens: jax.Array) -> jax.Array:
    """Per-pair preference loss (module docstring) from per-sequence log-probs."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    z = config.beta * (chosen_ratio - rejected_ratio)
    eps = config.label_smoothing
    if config.loss == "sigmoid":
        return -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
    if config.loss == "robust":
        return (-(1 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1 - 2 * eps)
    if config.loss == "hinge":
        return jax.nn.relu(1 - z)
    delta = (chosen_ratio / jnp.maximum(chosen_tokens, 1.0)
             - rejected_ratio / jnp.maximum(rejected_tokens, 1.0))
    return (delta - 1 / (2 * config.beta)) ** 2


class DPOObjective:
    """Objective protocol (`marco_jax.train.objective`) for direct preference optimisation."""

    name = "dpo"

    def __init__(self, config: DPOConfig, pairs_per_row: int, languages: Sequence[str] = (),
                 loss_chunk: int = 0):
        self.config = config
        self.pairs_per_row = int(pairs_per_row)
        self.languages = tuple(languages)
        self.loss_chunk = int(loss_chunk)
        self.needs_reference = config.reference == "model"
        self.batch_keys = (TOKEN_KEYS + PAIR_KEYS
                           + (("pair_language_ids",) if self.languages else ())
                           + (REF_KEYS if config.reference == "precomputed" else ()))

    def sequence_logps(self, model: Qwen2ForCausalLM, batch: Mapping[str, jax.Array]
                       ) -> dict[str, jax.Array]:
        """Per pair slot [B, P]: chosen/rejected log-probs and answer-token counts."""
        logps, counts = segment_logps(model, batch, 2 * self.pairs_per_row, self.loss_chunk)
        c, r = batch["chosen_segment"], batch["rejected_segment"]
        pick = lambda x, s: jnp.take_along_axis(x, s, axis=1)  # noqa: E731
        return {"chosen": pick(logps, c), "rejected": pick(logps, r),
                "chosen_tokens": pick(counts, c), "rejected_tokens": pick(counts, r)}

    def loss(self, model: Qwen2ForCausalLM, batch: Mapping[str, jax.Array],
             reference: Qwen2ForCausalLM | None = None) -> tuple[jax.Array, dict]:
        cfg = self.config
        policy = self.sequence_logps(model, batch)
        valid = (batch["chosen_segment"] > 0).astype(jnp.float32)
        if cfg.reference == "precomputed":
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        elif cfg.reference == "model":
            if reference is None:
                raise ValueError("dpo.reference='model' needs the frozen reference model")
            ref = jax.lax.stop_gradient(self.sequence_logps(reference, batch))
            ref_c, ref_r = ref["chosen"], ref["rejected"]
        else:
            ref_c = ref_r = jnp.zeros_like(policy["chosen"])
        ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
        per_pair = preference_losses(cfg, policy["chosen"], policy["rejected"], ref_c, ref_r,
                                     policy["chosen_tokens"], policy["rejected_tokens"])
        if cfg.sft_weight:
            chosen_nll = -policy["chosen"] / jnp.maximum(policy["chosen_tokens"], 1.0)
            per_pair = per_pair + cfg.sft_weight * chosen_nll
        per_pair = per_pair * valid
        loss_sum = jnp.sum(per_pair)

        chosen_rewards = jax.lax.stop_gradient(cfg.beta * (policy["chosen"] - ref_c))
        rejected_rewards = jax.lax.stop_gradient(cfg.beta * (policy["rejected"] - ref_r))
        stats = {
            "loss": jax.lax.stop_gradient(per_pair),
            "rewards_chosen": chosen_rewards, "rewards_rejected": rejected_rewards,
            "margins": chosen_rewards - rejected_rewards,
            "correct": (chosen_rewards > rejected_rewards).astype(jnp.float32),
            "logps_chosen": jax.lax.stop_gradient(policy["chosen"]),
            "logps_rejected": jax.lax.stop_gradient(policy["rejected"]),
        }
        sums = {"weight": jnp.sum(valid)}
        for name in PAIR_STATS:
            sums[f"{name}_sum"] = jnp.sum(stats[name] * valid)
        if self.languages:
            onehot = jax.nn.one_hot(batch["pair_language_ids"], len(self.languages),
                                    dtype=jnp.float32) * valid[..., None]  # -1 -> all zeros
            sums["pairs_by_language"] = jnp.sum(onehot, axis=(0, 1))
            for name in PAIR_STATS:
                sums[f"{name}_by_language"] = jnp.einsum("bp,bpl->l", stats[name], onehot)
        return loss_sum, sums

    def metrics(self, sums: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, float]:
        pairs = float(sums["weight"])
        if pairs <= 0:
            return {}
        names = {"loss": "loss", "rewards_chosen": "rewards/chosen",
                 "rewards_rejected": "rewards/rejected", "margins": "rewards/margins",
                 "correct": "rewards/accuracies", "logps_chosen": "logps/chosen",
                 "logps_rejected": "logps/rejected"}
        out = {f"{prefix}{label}": float(sums[f"{key}_sum"]) / pairs
               for key, label in names.items()}
        out[f"{prefix}pairs"] = pairs
        if self.languages and "pairs_by_language" in sums:
            counts = np.asarray(sums["pairs_by_language"])
            for i, lang in enumerate(self.languages):
                if counts[i] > 0:
                    for key, label in names.items():
                        value = np.asarray(sums[f"{key}_by_language"])[i] / counts[i]
                        out[f"{prefix}{label}/{lang}"] = float(value)
                    out[f"{prefix}pairs/{lang}"] = float(counts[i])
        return out
