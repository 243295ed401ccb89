"""What an objective plugs into the one training loop: its batch keys, its loss, its metrics.

The loop (`marco_jax.train.loop`) owns stepping, accumulation, checkpoints, preemption, eval and
logging; an objective (CPT/LM, SFT, DPO) only says how a batch becomes a loss and which figures
to log. Everything an objective returns from `loss` is a *sum* over the micro-batch, so
micro-batches, data shards and logging windows combine by addition:

- `loss_sum` is differentiated; the loop divides the summed gradients (and `loss_sum`) by the
  summed `sums["weight"]` of the whole global batch (target tokens for an LM, pairs for DPO), so
  m accumulation steps give exactly the update of one large batch;
- every other entry of `sums` is an additive statistic (e.g. per-language loss sums and token
  counts, chosen-reward sums, correct-pair counts) that `metrics` turns into logged ratios on the
  host, over a logging window or a whole held-out pass. Eval reuses the same `loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import jax
import numpy as np

from marco_jax.model.qwen2 import Qwen2ForCausalLM

Batch = Mapping[str, jax.Array]
Sums = dict[str, jax.Array]


class Objective(Protocol):
    name: str
    # Keys of the host batch the loss reads; each an array with leading dims [global_batch, ...].
    batch_keys: tuple[str, ...]
    # True: the loop builds a frozen reference model (same architecture) and passes it to `loss`.
    needs_reference: bool

    def loss(self, model: Qwen2ForCausalLM, batch: Batch,
             reference: Qwen2ForCausalLM | None = None) -> tuple[jax.Array, Sums]:
        """(differentiable loss SUM over the micro-batch, additive sums incl. "weight")."""
        ...

    def metrics(self, sums: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, float]:
        """Logged scalars from sums accumulated over steps (host side, numpy). `prefix` is "" for
        training windows and "eval_" for held-out passes."""
        ...

