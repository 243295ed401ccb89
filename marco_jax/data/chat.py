"""ChatML, the Qwen2 chat format: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.

`render_chatml` gives the prompt string (what Hugging Face's `apply_chat_template(...,
tokenize=False)` returns for Qwen2); `encode_chat` gives token ids plus the SFT loss mask, and is
the safe path for training data: message content is always encoded as plain text, so a literal
"<|im_end|>" inside a message can never close a turn.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from marco_jax.data.tokenizer import IM_END, IM_START, Qwen2Tokenizer, get_tokenizer

ROLES = ("system", "user", "assistant")
# What Qwen2-Instruct's template inserts when a conversation has no system message.
QWEN2_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

Message = Mapping[str, str]

# The same rendering as a Hugging Face `chat_template` (Jinja), with `{% generation %}` around each
# assistant turn's content and <|im_end|>, so `apply_chat_template(...,
# return_assistant_tokens_mask=True)` reproduces `encode_chat`'s mask. Pass
# `default_system_prompt=...` to apply_chat_template to insert a system turn when none is given
# (Qwen2-Instruct's behaviour); without it, like `encode_chat(messages)`, none is added.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system_prompt is defined %}"
    "{{ '<|im_start|>system\\n' + default_system_prompt + '<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def validate_messages(messages: Sequence[Message], default_system_prompt: str | None = None
                      ) -> list[tuple[str, str]]:
    """Checks the conversation and returns its (role, content) pairs, default system included."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', "
                            f"got {type(message).__name__}")
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise ValueError(f"messages[{i}] lacks {missing}; it has keys {sorted(message)}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{i}]['role'] is {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise TypeError(f"messages[{i}]['content'] must be str, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ValueError(f"messages[{i}] is a system message; only messages[0] may be one")
        turns.append((role, content))
    if default_system_prompt is not None and turns[0][0] != "system":
        turns.insert(0, ("system", default_system_prompt))
    return turns


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = False,
                  default_system_prompt: str | None = None) -> str:
    """The ChatML string for `messages`, optionally opening an assistant turn at the end.

    Pass `default_system_prompt=QWEN2_DEFAULT_SYSTEM_PROMPT` to reproduce Qwen2-Instruct's template
    exactly (it adds that system message when none is given).
    """
    turns = validate_messages(messages, default_system_prompt)
    text = "".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in turns)
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def encode_chat(messages: Sequence[Message], add_generation_prompt: bool = False,
                default_system_prompt: str | None = None,
                tokenizer: Qwen2Tokenizer | None = None) -> tuple[list[int], list[int]]:
    """Token ids of `render_chatml(...)` and the SFT loss mask.

    The mask is 1 on every token holding assistant content, and on the `<|im_end|>` closing an
    assistant turn (the model must learn to stop); 0 elsewhere. Ids equal a whole-string encode
    of the rendered text with specials parsed, except that specials inside content stay text.
    """
    tok = tokenizer or get_tokenizer()
    ids: list[int] = []
    mask: list[int] = []
    turns = validate_messages(messages, default_system_prompt)
    for n, (role, content) in enumerate(turns):
        # Text between two specials is one BPE segment, as in a whole-string encode; the "\n"
        # after the previous <|im_end|> belongs to this segment's predecessor.
        if n:
            ids += tok.encode("\n")
            mask += [0]
        header = f"{role}\n"
        segment = unicodedata.normalize("NFC", header + content)
        segment_ids = tok.encode(segment)
        ids.append(tok.im_start_id)
        mask.append(0)
        ids += segment_ids
        if role == "assistant":
            # A token is content if any of its bytes lies past the header (HF's char_to_token
            # rule for assistant masks); a token straddling the boundary therefore counts.
            end, header_len = 0, len(header.encode("utf-8"))
            for token_id in segment_ids:
                end += len(tok.id_to_token_bytes(token_id))
                mask.append(int(end > header_len))
        else:
            mask += [0] * len(segment_ids)
        ids.append(tok.im_end_id)
        mask.append(int(role == "assistant"))
    ids += tok.encode("\n")
    mask += [0]
    if add_generation_prompt:
        ids += [tok.im_start_id, *tok.encode("assistant\n")]
        mask += [0] * (len(ids) - len(mask))
    return ids, mask
