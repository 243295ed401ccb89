"""lm-evaluation-harness model `marco_jax`: any lm-eval task, run in process on our `Engine`.

Python API (register the model by importing this module):

    import lm_eval
    import marco_jax.evals.lm_eval_model  # noqa: F401  (registers "marco_jax")
    results = lm_eval.simple_evaluate(
        model="marco_jax",
        model_args="checkpoint=/ckpt/dir,batch_size=16,max_length=2048,dtype=bfloat16",
        tasks=["xcopa_et", "belebele_est_Latn"])

An already-built model (e.g. during training) goes in as an object:
`simple_evaluate(model=MarcoJaxLM(model=qwen2_model), tasks=...)`, or
`simple_evaluate(model="marco_jax", model_args={"model": qwen2_model}, ...)`; `engine=` takes a
ready `Engine` (with a mesh, say). Tasks defined over local files work as in lm-eval: write task
YAMLs (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`) in a folder and pass
`task_manager=lm_eval.tasks.TaskManager(include_path=FOLDER)`.

Command line: lm-eval's CLI only knows models registered at import time (0.4.13 has no plugin
entry point), so run its CLI through a one-line wrapper that imports this module first:

    python -c "import sys, marco_jax.evals.lm_eval_model; from lm_eval.__main__ import \
cli_evaluate; sys.argv[0] = 'lm_eval'; cli_evaluate()" run --model marco_jax \
        --model_args checkpoint=/ckpt/dir,batch_size=16 --tasks xcopa_et \
        [--include_path my_local_tasks/]

model_args: checkpoint (a converted checkpoint dir or a run's dir, see marco_jax.checkpoint),
step (a run's step), dtype (compute dtype, e.g. bfloat16), matmul_dtype (matmul operands, fp32
accumulation; bfloat16 uses AMX on CPUs that have it), batch_size (rows per compiled batch;
"auto" means 16), max_length (default 2048), max_gen_toks (default 256), length_buckets
(colon-separated, e.g. 128:512:2048), seed (sampling).

Multi-host: every process runs the same lm-eval call (lm-eval sees one rank); the engine splits
each batch over the mesh and gathers the results, so every process gets all of them.

Tokenisation follows lm-eval's `hf` model for Qwen2: special-token strings in a prompt become
special tokens (as a Hugging Face tokenizer does), no BOS, <|endoftext|> as the end-of-text and
empty-context prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm.auto import tqdm

from marco_jax.checkpoint import given_overrides, load_model
from marco_jax.data.chat import render_chatml
from marco_jax.data.tokenizer import ENDOFTEXT, Qwen2Tokenizer, get_tokenizer
from marco_jax.evals.engine import Engine
from marco_jax.infer.generate import upcast_weights_warning
from marco_jax.model.qwen2 import Qwen2ForCausalLM

_LOG = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


def _batch_size(value: Any) -> int:
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    return int(value)


def _buckets(value: Any, max_length: int) -> tuple[int, ...]:
    if value is None:
        return tuple(b for b in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
                     if b < max_length) + (max_length,)
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(":") if v)
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@register_model("marco_jax")
class MarcoJaxLM(TemplateLM):
    """lm-eval `TemplateLM` over `marco_jax.evals.engine.Engine` (see the module doc)."""

    def __init__(self, checkpoint: str | None = None, *, model: Qwen2ForCausalLM | None = None,
                 engine: Engine | None = None, tokenizer: Qwen2Tokenizer | None = None,
                 step: int | None = None, dtype: str | None = None,
                 matmul_dtype: str | None = None,
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_length: int = 2048,
                 max_gen_toks: int = 256, length_buckets: Any = None, seed: int = 0,
                 **ignored: Any):
        super().__init__()
        # lm-eval passes device/max_batch_size for every model; JAX places arrays itself.
        ignored.pop("device", None)
        ignored.pop("max_batch_size", None)
        if ignored:
            raise ValueError(f"marco_jax model_args: unknown {sorted(ignored)}; expected "
                             "checkpoint, step, dtype, matmul_dtype, batch_size, max_length, "
                             "max_gen_toks, length_buckets, seed (or model=/engine= objects)")
        if sum(x is not None for x in (checkpoint, model, engine)) != 1:
            raise ValueError("marco_jax: give exactly one of checkpoint=DIR, model=, engine=")
        if engine is None:
            if model is None:
                model = load_model(str(checkpoint), step=step,
                                   **given_overrides(dtype=dtype, matmul_dtype=matmul_dtype))
                warning = upcast_weights_warning(model, "model_args matmul_dtype")
                if warning:  # as the generate and evaluate CLIs say it
                    _LOG.warning(warning.removeprefix("warning: "))
            engine = Engine(model, tokenizer or get_tokenizer(),
                            batch_size=_batch_size(batch_size), max_len=int(max_length),
                            length_buckets=_buckets(length_buckets, int(max_length)))
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self._calls = 0
        self._chat = False

    # -- what TemplateLM needs ----------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.engine.max_len

    @property
    def tokenizer_name(self) -> str:
        return "qwen2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int]:
        # Like a Hugging Face tokenizer: "<|im_start|>" etc. in the text are special tokens.
        return self.tokenizer.encode(string, allow_special=True)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special=True)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        results = self.engine.loglikelihood_tokens([(ctx, cont) for _, ctx, cont in requests],
                                                   progress=not disable_tqdm)
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        results = self.engine.loglikelihood_rolling(texts, progress=not disable_tqdm)
        for text, result in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their generation kwargs, each group batched by the engine."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm) as bar:
            for members in groups.values():
                texts = self._generate_group([requests[i].args for i in members])
                for i, text in zip(members, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(members))
        return out

    def _generate_group(self, args: list[tuple[str, dict]]) -> list[str]:
        kwargs = dict(normalize_gen_kwargs(dict(args[0][1]), self.max_gen_toks))
        until = handle_stop_sequences(kwargs.pop("until", None), eos=ENDOFTEXT)
        max_new = int(kwargs.pop("max_gen_toks"))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
        stop_tokens = [self.tokenizer.eos_id] + ([self.tokenizer.im_end_id] if self._chat else [])
        self._calls += 1
        prompts = [self.tok_encode(context) for context, _ in args]
        _, texts = self.engine.generate_tokens(
            prompts, max_new_tokens=max_new, stop=until, temperature=temperature,
            top_p=float(kwargs.pop("top_p", None) or 1.0),
            top_k=int(kwargs.pop("top_k", None) or 0), seed=self.seed + self._calls,
            stop_token_ids=stop_tokens)
        return texts

    # -- chat templates (lm-eval's --apply_chat_template) ---------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        self._chat = True
        return render_chatml(chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str:
        return "chatml"
