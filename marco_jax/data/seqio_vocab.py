"""`Qwen2Vocabulary`: the Qwen2 tokenizer as a `seqio.Vocabulary` (for seqio Tasks/Mixtures).

There is no TensorFlow-native op for tiktoken BPE, so the TF paths wrap the Python tokenizer in
`tf.numpy_function`; tiktoken releases the GIL, so tf.data's parallel map still scales.

Qwen2 has no PAD/UNK tokens and id 0 is the ordinary token "!". Following Qwen2's own
convention, `pad_id` is `<|endoftext|>` (as `eos_id`); real padding is marked by segment ids in
our batches, never by a token value. Decoding skips special tokens (like Hugging Face's
`skip_special_tokens=True`), which also removes the post-EOS padding `decode_tf` inserts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import seqio
import tensorflow as tf

from marco_jax.data.tokenizer import NUM_BPE_TOKENS, get_tokenizer


def _as_str(value: bytes | np.ndarray) -> str:
    # numpy_function hands a scalar tf.string over as `bytes` (or a 0-d object array).
    return (value.item() if isinstance(value, np.ndarray) else value).decode("utf-8")


def _encode_np(text: bytes | np.ndarray) -> np.ndarray:
    return np.asarray(get_tokenizer().encode(_as_str(text)), dtype=np.int32)


def _encode_rows_np(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = get_tokenizer().encode_batch([_as_str(t) for t in texts.reshape(-1)])
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    flat = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def _decode_rows_np(ids: np.ndarray) -> np.ndarray:
    tok = get_tokenizer()
    flat = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
    out = [tok.decode([i for i in row.tolist() if i < NUM_BPE_TOKENS]).encode("utf-8")
           for row in flat]
    return np.asarray(out, dtype=object).reshape(ids.shape[:-1])


class Qwen2Vocabulary(seqio.Vocabulary):
    """Qwen2 byte-level BPE for seqio; `vocab_size` 151,646, no extra (sentinel) ids."""

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def eos_id(self) -> int:
        return get_tokenizer().eos_id

    @property
    def pad_id(self) -> int:
        return get_tokenizer().eos_id

    @property
    def unk_id(self) -> None:
        return None  # byte-level BPE encodes every string; there is no unknown token

    @property
    def _base_vocab_size(self) -> int:
        return get_tokenizer().vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return get_tokenizer().encode(s)

    def _decode(self, ids: Sequence[int]) -> str:
        return get_tokenizer().decode(ids, skip_special=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> int32 [n]; rank-1 strings -> int32 RaggedTensor [batch, None]."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(_encode_np, [s], tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if s.shape.rank == 1:
            flat, lengths = tf.numpy_function(
                _encode_rows_np, [s], (tf.int32, tf.int64), stateful=False
            )
            flat.set_shape([None])
            lengths.set_shape([s.shape[0]])
            return tf.RaggedTensor.from_row_lengths(flat, lengths)
        raise ValueError(f"Qwen2Vocabulary.encode_tf expects a scalar or 1-D string tensor, "
                         f"got shape {s.shape}")

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int [..., n] -> string [...] (one string per row)."""
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank is None or ids.shape.rank == 0:
            raise ValueError(f"Qwen2Vocabulary.decode_tf expects ids of rank >= 1, got {ids.shape}")
        text = tf.numpy_function(_decode_rows_np, [ids], tf.string, stateful=False)
        text.set_shape(ids.shape[:-1])
        return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Qwen2Vocabulary) and other.extra_ids == self.extra_ids

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.extra_ids))

    def __str__(self) -> str:
        tok = get_tokenizer()
        return f"Qwen2Vocabulary(ranks={tok.ranks_path}, vocab_size={tok.vocab_size})"
