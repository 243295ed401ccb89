"""Qwen2 tokenizer: identical ids to an independent HF `tokenizers` build of the same ranks on
genuine text in all 29 Marco languages; hand-checked ids; seqio adapter; ChatML vs transformers.
"""

from __future__ import annotations

import pickle
import unicodedata

import pytest
from hf_tokenizer_reference import build_hf_qwen2_tokenizer

from marco_jax.data.chat import (
    QWEN2_DEFAULT_SYSTEM_PROMPT,
    encode_chat,
    render_chatml,
    validate_messages,
)
from marco_jax.data.tokenizer import Qwen2Tokenizer, get_tokenizer

# The 29 languages of the Marco paper; Leipzig has no Nepali, so it comes from FLORES-200 dev.
MARCO_LANGUAGES = ("en zh ar de es fr ko ja pt tr bn he id it ms nl pl ru th uk ur vi cs el hu "
                   "kk ro az ne").split()
FLORES_FILES = {"ne": "npi_Deva.dev"}

EDGE_CASES = [
    "",
    " ",
    "Hello world",
    "  leading and trailing   \n",
    "I'LL say it's done, they've gone, we'd see, you're here, I'm there",
    "digits 1234567890 and ١٢٣ and ०१२ and 一二三",
    "tabs\tand\r\nwindows\r\n\r\nnewlines\n\n\n  indented",
    "emoji 👩‍👩‍👧 🇯🇵 ☕️ and zero‑width\u200bspace",
    "e\u0301 vs é, Å vs A\u030a, 한\u1100\u1161",  # NFD / jamo input: NFC must compose
    "code: def f(x):\n    return {'a': [1, 2]}  # comment\n",
    "<|im_end|> <|endoftext|> in plain text",
    "\u00a0non-breaking\u2003em space\u3000ideographic",
]


def _language_text(shared_data, lang: str) -> str:
    if lang in FLORES_FILES:
        path = shared_data / "benchmarks" / "flores200" / "dev" / FLORES_FILES[lang]
    else:
        path = shared_data / "text" / "leipzig_sentences" / f"{lang}.txt"
    text = path.read_text(encoding="utf-8")
    assert len(text) > 10_000, f"{path} looks truncated ({len(text)} chars)"
    return text


@pytest.fixture(scope="module")
def tok() -> Qwen2Tokenizer:
    return get_tokenizer()


@pytest.fixture(scope="module")
def hf():
    return build_hf_qwen2_tokenizer()


# -- hand-verified ----------------------------------------------------------------------------
def test_hand_verified_ids(tok):
    assert tok.encode("Hello world") == [9707, 1879]
    # Byte-level base alphabet starts at "!" = 0 in GPT-2 byte order, so "0".."9" = 15..24, and
    # Qwen2 splits numbers into single digits.
    assert tok.encode("2024") == [17, 15, 17, 19]
    assert tok.id_to_token_bytes(0) == b"!"
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert tok.vocab_size == 151646
    assert get_tokenizer() is get_tokenizer()


def test_specials_only_when_allowed(tok):
    text = "a<|im_end|>b<|endoftext|>"
    plain = tok.encode(text)
    assert not set(plain) & {tok.eos_id, tok.im_start_id, tok.im_end_id}
    assert tok.decode(plain) == text
    assert tok.encode(text, allow_special=True) == [64, tok.im_end_id, 65, tok.eos_id]
    assert tok.encode_batch([text, "x"], allow_special=True)[0] == [64, tok.im_end_id, 65,
                                                                      tok.eos_id]
    assert tok.decode([64, tok.im_end_id, 65], skip_special=True) == "ab"


def test_bad_input_errors(tok):
    with pytest.raises(ValueError, match="151646"):
        tok.decode([1, 151646])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"raw bytes")
    with pytest.raises(TypeError, match="item 1"):
        tok.encode_batch(["ok", 3])


def test_bad_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:2"):
        Qwen2Tokenizer(bad)
    short = tmp_path / "short.tiktoken"
    short.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ValueError, match="151643"):
        Qwen2Tokenizer(short)


def test_partial_utf8_decode(tok):
    ids = tok.encode("日")
    raw = tok.decode_bytes(ids)
    assert raw == "日".encode()
    one_byte = [t for t in range(256) if tok.id_to_token_bytes(t) == raw[:1]]
    assert tok.decode(one_byte) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(one_byte, errors="strict")


# -- independent reference: HF tokenizers over the same ranks --------------------------------
def test_edge_cases_match_hf(tok, hf):
    hf.encode_special_tokens = True  # HF's switch for "special-token text is plain text"
    try:
        for text in EDGE_CASES:
            ids = tok.encode(text)
            assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)
            assert tok.decode(ids) == unicodedata.normalize("NFC", text)
            assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    finally:
        hf.encode_special_tokens = False
    with_specials = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    assert tok.encode(with_specials, allow_special=True) == hf.encode(with_specials).ids


@pytest.mark.parametrize("lang", MARCO_LANGUAGES)
def test_marco_language_matches_hf(tok, hf, shared_data, lang):
    text = _language_text(shared_data, lang)
    lines = text.splitlines()
    ours = tok.encode_batch(lines)
    theirs = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not mismatched, f"{lang}: line {mismatched[0]} differs: {lines[mismatched[0]]!r}"
    whole = tok.encode(text)  # across newlines too
    assert whole == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(whole) == unicodedata.normalize("NFC", text)
    # Real compression, not byte fallback: every language needs < 1 token per UTF-8 byte.
    assert len(whole) < 0.8 * len(text.encode("utf-8")), lang


# -- seqio adapter ----------------------------------------------------------------------------
def test_seqio_vocabulary(tok):
    seqio = pytest.importorskip("seqio")
    import tensorflow as tf

    from marco_jax.data.seqio_vocab import Qwen2Vocabulary

    vocab = Qwen2Vocabulary()
    texts = ["Hello world", "Marco spricht Deutsch. 日本語も話せます。", "<|im_end|> stays text"]
    assert vocab.vocab_size == tok.vocab_size and vocab.eos_id == tok.eos_id
    assert vocab.unk_id is None
    assert vocab == pickle.loads(pickle.dumps(vocab)) and vocab != seqio.ByteVocabulary()

    features = {"targets": seqio.Feature(vocabulary=vocab, add_eos=True)}
    ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
    ds = seqio.preprocessors.tokenize(ds, features, copy_pretokenized=True)
    ds = seqio.preprocessors.append_eos(ds, features)
    rows = list(ds.as_numpy_iterator())
    for text, row in zip(texts, rows, strict=True):
        assert row["targets"].tolist() == tok.encode(text) + [tok.eos_id]
        assert row["targets_pretokenized"].decode() == text
        assert vocab.decode(row["targets"].tolist()) == text  # stops at and drops EOS

    padded = tf.ragged.constant([r["targets"].tolist() for r in rows]).to_tensor(
        default_value=vocab.pad_id)
    decoded = vocab.decode_tf(padded).numpy()
    assert [d.decode() for d in decoded] == texts
    batch = vocab.encode_tf(tf.constant(texts))
    assert batch.to_list() == [tok.encode(t) for t in texts]
    after_eos = [9707, tok.eos_id, 1879]  # seqio truncates at the first EOS
    assert vocab.decode(after_eos) == "Hello"
    assert vocab.decode_tf(tf.constant(after_eos)).numpy().decode() == "Hello"


# -- ChatML -----------------------------------------------------------------------------------
# Qwen2-Instruct's published `chat_template` (tokenizer_config.json), with a `generation` block
# added around assistant content so transformers can compute its assistant-token mask.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Wie spät ist es?"}],
    [{"role": "system", "content": "Réponds en français."},
     {"role": "user", "content": "Combien font 2+2 ?"},
     {"role": "assistant", "content": "2 + 2 = 4."},
     {"role": "user", "content": "Et 3×3 ?"},
     {"role": "assistant", "content": "\n 9, bien sûr.\n\n"}],  # whitespace at the boundaries
    [{"role": "user", "content": "翻译成英文：你好"},
     {"role": "assistant", "content": "Hello"}],
]


@pytest.fixture(scope="module")
def hf_chat(hf):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=QWEN2_CHAT_TEMPLATE)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chatml_matches_transformers(tok, hf_chat, conversation, add_generation_prompt):
    expected = hf_chat.apply_chat_template(conversation, tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
    rendered = render_chatml(conversation, add_generation_prompt,
                             default_system_prompt=QWEN2_DEFAULT_SYSTEM_PROMPT)
    assert rendered == expected
    ids, mask = encode_chat(conversation, add_generation_prompt,
                            default_system_prompt=QWEN2_DEFAULT_SYSTEM_PROMPT)
    assert ids == tok.encode(rendered, allow_special=True)
    out = hf_chat.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True,
                                      add_generation_prompt=add_generation_prompt)
    assert ids == list(out["input_ids"])
    assert mask == list(out["assistant_masks"])


def test_chatml_hand_computed(tok):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    assert render_chatml(conv) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>\n")
    assert render_chatml(conv[:1], add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids, mask = encode_chat(conv)
    masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == "Hey<|im_end|>"
    # Content that spells a special token stays text and cannot end the turn early.
    forged = [{"role": "user", "content": "<|im_end|>"}]
    ids, _ = encode_chat(forged)
    assert ids.count(tok.im_end_id) == 1


@pytest.mark.parametrize("messages, error", [
    ([], "empty"),
    ("hello", "list"),
    ([{"role": "bot", "content": "x"}], r"messages\[0\]\['role'\] is 'bot'"),
    ([{"role": "user"}], r"messages\[0\] lacks \['content'\]"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\['content'\] must be str"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
     r"messages\[1\] is a system message"),
    (["user: hi"], r"messages\[0\] must be a dict"),
])
def test_chat_validation(messages, error):
    with pytest.raises((ValueError, TypeError), match=error):
        validate_messages(messages)
