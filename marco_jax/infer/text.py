"""Text in, text out: tokenise prompts (plain or ChatML), decode, detokenise the continuations."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from marco_jax.data.chat import encode_chat
from marco_jax.data.tokenizer import Qwen2Tokenizer
from marco_jax.infer.generate import generate, left_pad
from marco_jax.model.qwen2 import Qwen2ForCausalLM


def prompt_ids(tokenizer: Qwen2Tokenizer, prompt: str, *, chat: bool = False,
               system: str | None = None) -> list[int]:
    """Token ids for a plain-text prompt, or a one-turn ChatML conversation that opens the
    assistant's turn (user text is encoded as text: a literal "<|im_end|>" stays text)."""
    if not chat:
        return tokenizer.encode(prompt)
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": prompt})
    ids, _ = encode_chat(messages, add_generation_prompt=True, tokenizer=tokenizer)
    return ids


def stop_ids(tokenizer: Qwen2Tokenizer, chat: bool) -> tuple[int, ...]:
    """Chat turns end with <|im_end|>; base models end documents with <|endoftext|>."""
    return (tokenizer.im_end_id, tokenizer.eos_id) if chat else (tokenizer.eos_id,)


def generate_text(model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int, chat: bool = False, system: str | None = None,
                  temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                  rng: jax.Array | int = 0, pad_multiple: int = 64) -> list[str]:
    """Continuations of `prompts` (the stop token not included)."""
    ids = [prompt_ids(tokenizer, p, chat=chat, system=system) for p in prompts]
    tokens, mask = left_pad(ids, pad_id=tokenizer.eos_id, multiple=pad_multiple)
    stops = stop_ids(tokenizer, chat)
    out = generate(model, tokens, max_new_tokens, prompt_mask=mask, temperature=temperature,
                   top_p=top_p, top_k=top_k, eos_ids=stops, pad_id=tokenizer.eos_id, rng=rng,
                   vocab_limit=tokenizer.vocab_size)
    tokens, lengths, finished = jax.device_get((out.tokens, out.lengths, out.finished))
    texts = []
    for row, n, done in zip(tokens, lengths, finished, strict=True):
        row = row[:n - 1] if done else row[:n]  # drop the stop token
        texts.append(tokenizer.decode(np.asarray(row).tolist()))
    return texts
