"""Hugging Face Qwen2 checkpoint -> our converted checkpoint, streamed tensor by tensor.

Each HF tensor is read on its own (vocabulary tensors in blocks of rows), transformed by its
`mapping.RULES` entry and written into its slice of the stacked on-disk array, so peak host memory
is about one layer tensor (or one vocab block), whatever the model size. The output may be local or
gs:// (written through tensorstore); the HF input must be local.

Refused (ValueError / FileExistsError naming the file or tensor): a non-empty output directory
unless overwrite, a NaN or Inf in any tensor (checked as each tensor or vocabulary block streams
through) unless allow_nonfinite, and whatever `hf_source` cannot read.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from etils import epath

from marco_jax.checkpoint.params import (
    CONFIG_FILE,
    PARAMS_DIR,
    abstract_params,
    flat_params,
    write_model_config,
)
from marco_jax.checkpoint.streaming import StreamingOrbaxWriter
from marco_jax.convert.hf_source import HFSource, read_hf_config
from marco_jax.convert.mapping import RULES, VOCAB_BLOCK_BYTES, expected_hf_tensors, rule_for
from marco_jax.model.config import Qwen2Config
from marco_jax.paths import is_remote

log = logging.getLogger(__name__)

# Non-parameter buffers some older transformers versions saved; they carry no weights.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def check_hf_tensors(source: HFSource, config: Qwen2Config) -> list[str]:
    """Validate names and shapes against the config; returns names to skip (extra tied lm_head,
    ignored buffers). Raises ONE error listing every missing, unexpected or mis-shaped tensor."""
    expected = expected_hf_tensors(config)
    found = {n: source.shape(n) for n in source.names()}
    skip = [n for n in found if _IGNORED.match(n)]
    if config.tie_word_embeddings and "lm_head.weight" in found:
        skip.append("lm_head.weight")  # tied checkpoints may still carry the (equal) head
        expected = {**expected, "lm_head.weight": RULES["lm_head.weight"].hf_shape(config)}
    problems = [f"missing {n} (expected shape {list(s)})" for n, s in expected.items()
                if n not in found]
    problems += [f"unexpected {n} (shape {list(s)})" for n, s in found.items()
                 if n not in expected and n not in skip]
    problems += [f"mis-shaped {n}: shape {list(found[n])}, expected {list(s)}"
                 for n, s in expected.items() if n in found and tuple(found[n]) != tuple(s)]
    if problems:
        raise ValueError(f"{source.directory}: checkpoint does not match its config.json "
                         f"({len(problems)} problems):\n  " + "\n  ".join(problems))
    return skip


def check_finite(value: np.ndarray, name: str, where: str, offset: int = 0) -> None:
    """Raises naming tensor `name` when `value` holds NaN or Inf (`offset`: the first row of a
    block of a vocabulary tensor, so the reported index is the tensor's own)."""
    if value.dtype.kind != "f" and value.dtype != np.dtype(jnp.bfloat16):
        return
    finite = np.isfinite(value)
    if finite.all():
        return
    bad = ~finite
    n_nan = int(np.isnan(value).sum())
    first = np.unravel_index(int(np.argmax(bad)), value.shape)
    first = (first[0] + offset, *first[1:]) if first else first
    raise ValueError(f"{where}: tensor {name} holds {n_nan} NaN and {int(bad.sum()) - n_nan} Inf "
                     f"values (first at index {list(map(int, first))}) in this part; the "
                     "checkpoint looks corrupt. Pass allow_nonfinite=True (--allow-nonfinite) "
                     "to convert it anyway")


def check_output_dir(out_dir: str, overwrite: bool) -> None:
    """An output directory holding anything is refused unless `overwrite` (which replaces our
    files in it: params/ and model_config.json)."""
    out = epath.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out_dir}: is a file; expected a directory for the checkpoint")
    if not overwrite and out.exists():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            raise FileExistsError(f"{out_dir} is not empty (holds {', '.join(entries[:3])}"
                                  f"{', ...' if len(entries) > 3 else ''}); pass overwrite=True "
                                  "(--overwrite) to replace the checkpoint in it")


def _stored_dtype(source: HFSource, names: list[str], dtype: str | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(jnp.dtype(dtype))
    dtypes = sorted({source.dtype(n).name for n in names})
    if len(dtypes) != 1:
        raise ValueError(f"{source.directory}: tensors mix dtypes {dtypes}; pass dtype= "
                         "(--dtype) to pick one")
    return source.dtype(names[0])


def _target_vocab(hf_vocab: int, vocab_size: int | None, vocab_multiple: int | None) -> int:
    if vocab_size is not None and vocab_multiple is not None:
        raise ValueError("give vocab_size or vocab_multiple, not both")
    if vocab_multiple is not None:
        if vocab_multiple < 1:
            raise ValueError(f"vocab_multiple={vocab_multiple} must be >= 1")
        return math.ceil(hf_vocab / vocab_multiple) * vocab_multiple
    return hf_vocab if vocab_size is None else vocab_size


def _vocab_block_rows(hidden: int, itemsize: int) -> int:
    return max(1, VOCAB_BLOCK_BYTES // (hidden * itemsize))


def converted_chunks(config: Qwen2Config, key: Sequence[str], shape: Sequence[int],
                     dtype: np.dtype) -> list[int]:
    """Chunk shape of a converted checkpoint's array: one layer of a stacked parameter, a block
    of vocabulary rows, or the whole (small) array; writers fill one chunk at a time."""
    chunks = list(shape)
    if tuple(key[:2]) == ("model", "layers"):
        chunks[0] = 1
    vocab_axis = next((r.ours_vocab_axis for r in RULES.values() if r.ours == tuple(key)), None)
    if vocab_axis is not None:
        rows = _vocab_block_rows(config.hidden_size, np.dtype(dtype).itemsize)
        chunks[vocab_axis] = min(rows, shape[vocab_axis])
    return chunks


def convert_hf_to_orbax(hf_dir: str | Path, out_dir: str | os.PathLike, *,
                        dtype: str | None = None,
                        vocab_size: int | None = None, vocab_multiple: int | None = None,
                        overwrite: bool = False, allow_nonfinite: bool = False) -> Qwen2Config:
    """Convert a HF Qwen2 directory (config.json + safetensors, or .bin) into `out_dir`.

    dtype: store params in this dtype (default: the checkpoint's own, so bf16 stays bf16).
    vocab_size / vocab_multiple: pad (zero rows) or trim the vocabulary to this size / up to a
    multiple; by default the rows are kept as they are (e.g. 151936 rows for 151646 tokens).
    overwrite: replace the checkpoint in a non-empty `out_dir` (refused otherwise).
    allow_nonfinite: convert NaN/Inf weights as they are (refused otherwise, naming the tensor).
    """
    if is_remote(hf_dir):
        raise ValueError(f"{hf_dir}: the HF checkpoint must be a local directory (download it "
                         "first, e.g. `gcloud storage cp -r` or `huggingface-cli download`)")
    hf_dir, out_dir = Path(hf_dir), str(out_dir)
    check_output_dir(out_dir, overwrite)
    hf_config = read_hf_config(hf_dir)
    source = HFSource(hf_dir)
    skip = check_hf_tensors(source, hf_config)
    names = [n for n in source.names() if n not in skip]
    stored = _stored_dtype(source, names, dtype)
    vocab = _target_vocab(hf_config.vocab_size, vocab_size, vocab_multiple)
    if vocab < hf_config.vocab_size:
        log.warning("trimming the vocabulary from %d to %d rows: rows %d.. are dropped",
                    hf_config.vocab_size, vocab, vocab)
    config = hf_config.replace(vocab_size=vocab, param_dtype=stored.name)
    params_dir = epath.Path(out_dir) / PARAMS_DIR
    created_out = not is_remote(out_dir) and not os.path.exists(out_dir)
    check = (lambda value, name, offset=0: None) if allow_nonfinite else (
        lambda value, name, offset=0: check_finite(value, name, str(source.directory), offset))

    writer = StreamingOrbaxWriter(str(params_dir))
    rows = _vocab_block_rows(config.hidden_size, stored.itemsize)
    try:
        for key, leaf in flat_params(abstract_params(config)).items():
            writer.create(key, leaf.shape, stored,
                          converted_chunks(config, key, leaf.shape, stored))
        for i, name in enumerate(names):
            rule, layer = rule_for(name)
            if rule.ours_vocab_axis is not None:
                _copy_vocab_tensor(source, name, rule, hf_config, vocab, rows, stored, writer,
                                   check)
            else:
                value = source.read(name)
                check(value, name)
                value = rule.to_ours(value, hf_config).astype(stored)
                writer.write(rule.ours, () if layer is None else (layer,), value)
            log.info("[%d/%d] %s", i + 1, len(names), name)
        if "lm_head.weight" in skip:
            _check_tied_head(source, rows)
        writer.finalize()
    except BaseException:
        writer.abort()
        if created_out and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # leave nothing behind that was not there before
        raise
    write_model_config(out_dir, config)
    log.info("wrote %s and %s/ under %s", CONFIG_FILE, PARAMS_DIR, out_dir)
    return config


def _copy_vocab_tensor(source: HFSource, name: str, rule, config: Qwen2Config, vocab: int,
                       rows: int, dtype: np.dtype, writer: StreamingOrbaxWriter, check) -> None:
    """Copy HF [vocab, hidden] in blocks of rows; rows past the HF vocab are written as zeros.
    `check(block, name, first_row)` sees every block as read."""
    axis = rule.ours_vocab_axis
    hf_rows = source.shape(name)[0]
    for r0 in range(0, vocab, rows):
        r1 = min(r0 + rows, vocab)
        have = max(0, min(r1, hf_rows) - r0)
        if have == r1 - r0:
            read = source.read(name, (r0, r1))
            check(read, name, r0)
            block = read.astype(dtype, copy=False)
        else:  # the block reaches into padding rows
            block = np.zeros((r1 - r0, config.hidden_size), dtype)
            if have:
                read = source.read(name, (r0, r0 + have))
                check(read, name, r0)
                block[:have] = read
        index = (slice(None),) * axis + (slice(r0, r1),)
        writer.write(rule.ours, index, rule.to_ours(block, config))


def _check_tied_head(source: HFSource, rows: int) -> None:
    """A tied checkpoint's extra lm_head.weight is dropped, so it must equal the embedding."""
    n = source.shape("lm_head.weight")[0]
    for r0 in range(0, n, rows):
        span = (r0, min(r0 + rows, n))
        a, b = source.read("model.embed_tokens.weight", span), source.read("lm_head.weight", span)
        if a.tobytes() != b.tobytes():
            raise ValueError(f"{source.directory}: config.json has tie_word_embeddings=true but "
                             f"lm_head.weight differs from model.embed_tokens.weight in rows "
                             f"{span[0]}..{span[1] - 1}; set tie_word_embeddings=false to keep it")
