"""Inference: KV-cache decoding (greedy / temperature / top-k / top-p) and continuation scoring."""

from marco_jax.infer.generate import GenerateOutput, generate, left_pad
from marco_jax.infer.sampling import SamplingParams, filter_logits, sample_tokens
from marco_jax.infer.score import ScoreResult, score_batch, score_requests

__all__ = [
    "GenerateOutput",
    "SamplingParams",
    "ScoreResult",
    "filter_logits",
    "generate",
    "left_pad",
    "sample_tokens",
    "score_batch",
    "score_requests",
]
