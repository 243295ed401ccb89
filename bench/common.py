"""What the benches share: timing (decode split into prefill and per-token steps), the measured
read bandwidth and the bytes a decode step must read, the random transformers peer model
(bench_train_vs_torch, bench_generate, bench_device), left-padded prompts, transformers'
`generate`, comma-list flags and the CLIs' host-memory setting. No platform is forced here (the
CPU benches pin it themselves)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marco_jax import host_malloc, platform
from marco_jax.config.cli import fail
from marco_jax.model.config import Qwen2Config


def reexec_like_the_clis() -> None:
    """Re-executes the bench (from its `__main__` block only) under the host-memory setting the
    marco_jax CLIs run with on CPU (marco_jax/host_malloc.py): process-wide, so both sides of a
    comparison run under it. MARCO_HOST_MALLOC=default keeps glibc's defaults."""
    host_malloc.reexec_with_hugepages(platform.jax_runs_on_cpu_only())


def host_malloc_line() -> str:
    if host_malloc.hugepages_requested():
        return "host malloc: glibc.malloc.hugetlb=1 (as the marco_jax CLIs on CPU), both sides"
    return "host malloc: glibc defaults, both sides"


def best_of(fn: Callable[[], Any], repeats: int = 2) -> tuple[Any, float]:
    """(last result, fastest wall seconds) of `repeats` calls."""
    out, best = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def alternating(sides: Sequence, round_: int) -> list:
    """The sides in order on even rounds, reversed on odd ones (load drift and neighbours hit
    every side alike)."""
    return list(sides) if round_ % 2 == 0 else list(sides)[::-1]


def times_in_turns(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call (its result blocked on) in every round, the calls taking turns in
    `alternating` order: the per-round times of each side, paired by round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        for name in alternating(list(calls), round_):
            t0 = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def timed_after_reentry(fn: Callable[[], Any]) -> float:
    """Seconds of one call of `fn`, run once untimed first. Our step's first run right after a
    PyTorch step is slower than in a loop of our own steps (layer-heavy, one run of 4 rounds:
    4.96 s vs 4.42 s median; PyTorch's 5.19 vs 5.27 s: no such cost), which a training loop never
    pays: timing the second call measures each side in its steady state."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass(frozen=True)
class DecodeTiming:
    """One side's greedy decode of `new_tokens` per row, split as serving benches report it:
    `prefill_s` (the prompt plus the first token: time to first token) and `step_s` (each
    further token: (T(new_tokens) - T(1)) / (new_tokens - 1))."""
    tokens: Any  # [batch, new_tokens] of the full run
    prefill_s: float
    step_s: float
    total_s: float

    def end_to_end_tokens_per_s(self) -> float:
        """New tokens over the full run's wall time, prefill included."""
        return np.asarray(self.tokens).size / self.total_s


def time_decode_sides(runs: Sequence[Callable[[int], Any]], new_tokens: int, rounds: int = 2,
                      attempts: int = 3) -> list[DecodeTiming]:
    """`runs[i](n)` decodes n new tokens per row on side i (compiled/warmed up by the caller for
    n=1 and n=new_tokens). The sides take turns within each round, in reversed order every other
    round (`alternating`), so a slow spell of a shared machine hits every side alike; a turn is
    run(1) timed after an untimed re-entry call (`timed_after_reentry`: one side's after-effects
    on the next are not charged), then run(new_tokens); each side's best of `rounds` at each
    length. A step is the difference of the two lengths: when noise makes a side's non-positive
    (tiny models, few tokens, busy cores) every side is timed again with twice the rounds, and
    after `attempts` tries that is an error, never a zero step."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens}: the step time needs at least 2")
    first = [float("inf")] * len(runs)
    total = [float("inf")] * len(runs)
    outs: list[Any] = [None] * len(runs)
    for _ in range(attempts):
        for round_ in range(rounds):
            for i in alternating(range(len(runs)), round_):
                t1 = timed_after_reentry(lambda i=i: runs[i](1))
                out, tn = best_of(lambda i=i: runs[i](new_tokens), 1)
                first[i], total[i], outs[i] = min(first[i], t1), min(total[i], tn), out
        if all(tn > t1 for t1, tn in zip(first, total, strict=True)):
            return [DecodeTiming(out, t1, (tn - t1) / (new_tokens - 1), tn)
                    for out, t1, tn in zip(outs, first, total, strict=True)]
        rounds *= 2
    bad = next(i for i in range(len(runs)) if total[i] <= first[i])
    raise RuntimeError(f"side {bad}: decoding {new_tokens} tokens took no longer than 1 "
                       f"({total[bad]:.4g} vs {first[bad]:.4g} s) in {attempts} tries: too few "
                       "new tokens to time a step")


def time_decode(run: Callable[[int], Any], new_tokens: int, repeats: int = 2,
                attempts: int = 3) -> DecodeTiming:
    """`time_decode_sides` of one side, `repeats` rounds."""
    return time_decode_sides([run], new_tokens, repeats, attempts)[0]


def measure_read_bandwidth(gib: float = 1.0, dtype: str = "float32") -> float:
    """Bytes/s of a jitted sum (fp32 accumulation) over `gib` GiB of `dtype` (best of 5)."""
    x = jnp.ones((int(gib * 2**30) // jnp.dtype(dtype).itemsize,), dtype)
    f = jax.jit(lambda v: jnp.sum(v, dtype=jnp.float32))
    f(x).block_until_ready()
    _, best = best_of(lambda: f(x).block_until_ready(), repeats=5)
    return x.nbytes / best


def measure_matmul_flops(n: int = 1024) -> float:
    """FLOP/s of a jitted float32 [n, n] @ [n, n] (XLA's GEMM, best of 5): the host's measured
    compute peak, the compute half of a roofline."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    _, best = best_of(lambda: f(a).block_until_ready(), repeats=5)
    return 2 * n ** 3 / best


def decode_flops_per_step(cfg: Qwen2Config, batch: int, cache_slots: int) -> float:
    """Multiply-add FLOPs of one decode step: every matmul weight (the lm head; not an untied
    input embedding, which is a gather) once per row, and attention over `cache_slots` filled
    slots (scores and the weighted sum of values)."""
    embed = cfg.vocab_size * cfg.hidden_size
    matmul_params = cfg.num_params() - (0 if cfg.tie_word_embeddings else embed)
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.dim_per_head * cache_slots
    return batch * (2 * matmul_params + attention)


def decode_bytes_per_step(cfg: Qwen2Config, batch: int, cache_slots: int, weight_bytes: int,
                          kv_bytes: int) -> float:
    """Bytes one decode step must read: the weights (an untied embedding only for the fed rows)
    and `cache_slots` filled slots of the KV cache (the benches pass the mean over the decode
    steps; slots not written yet need no read, and our CPU attention kernel skips them)."""
    embed = cfg.vocab_size * cfg.hidden_size
    weights = cfg.num_params() - (0 if cfg.tie_word_embeddings else embed - batch * cfg.hidden_size)
    kv = (2 * cfg.num_hidden_layers * batch * cache_slots * cfg.num_key_value_heads
          * cfg.dim_per_head)
    return weights * weight_bytes + kv * kv_bytes


def random_hf_model(cfg: Qwen2Config, torch_dtype: Any):
    """A random `transformers.Qwen2ForCausalLM` of `cfg`'s shape (torch seed 0) in `torch_dtype`."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "torch_dtype")})
    return transformers.Qwen2ForCausalLM(hf_cfg).to(torch_dtype)


def peaked_hf_model(cfg: Qwen2Config, torch_dtype: Any):
    """`random_hf_model` in eval mode with q/k scaled 10x: peaked attention, so the next token
    depends on the context (decoding benches)."""
    import torch

    hf = random_hf_model(cfg, torch_dtype).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(10.0)
    return hf


def left_padded_prompts(vocab: int, batch: int, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [batch, prompt_len] int32, lengths [batch]): random prompts of prompt_len / 2 to
    prompt_len tokens (row 0 full), left-padded with 0; seeded by the batch size."""
    rng = np.random.default_rng(batch)
    tokens = rng.integers(3, vocab, (batch, prompt_len)).astype(np.int32)
    lengths = rng.integers(prompt_len // 2, prompt_len + 1, batch)
    lengths[0] = prompt_len
    tokens[np.arange(prompt_len)[None] < prompt_len - lengths[:, None]] = 0
    return tokens, lengths


def hf_generate(hf, tokens: np.ndarray, lengths: np.ndarray, new_tokens: int) -> np.ndarray:
    """transformers' greedy `generate` of exactly `new_tokens` per row, on the model's device."""
    import torch

    device = next(hf.parameters()).device
    ids = torch.from_numpy(tokens.astype(np.int64)).to(device)
    mask = torch.from_numpy((np.arange(tokens.shape[1])[None] >= tokens.shape[1]
                             - lengths[:, None]).astype(np.int64)).to(device)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None,
                          pad_token_id=0, eos_token_id=None)
    return out[:, tokens.shape[1]:].cpu().numpy()  # .cpu() waits for a GPU's work


def parse_list(flag: str, value: str, allowed: Sequence[str] | None = None,
               cast: Callable[[str], Any] = str) -> list:
    """A comma-list flag, or one line on stderr and exit 2."""
    try:
        items = [cast(v) for v in value.split(",") if v]
    except ValueError:
        fail(f"{flag} {value!r}: expected a comma list of integers, e.g. 1,8")
    if not items or (allowed is not None and any(v not in allowed for v in items)):
        expected = ", ".join(allowed) if allowed is not None else "values"
        fail(f"{flag} {value!r}: expected a comma list of {expected}")
    return items
