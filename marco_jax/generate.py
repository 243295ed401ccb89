"""CLI: continue prompts with a converted checkpoint.

  python -m marco_jax.generate --checkpoint DIR --prompt "Once upon a time" [--prompt ...]
      [--max-new-tokens 128] [--temperature 0 (greedy)] [--top-p 1.0] [--top-k 0] [--seed 0]
      [--chat [--system "You are a helpful assistant."]] [--dtype bfloat16]

With --chat each prompt is a user turn rendered as ChatML, and decoding stops at <|im_end|>.
"""

from __future__ import annotations

import argparse
import sys

from marco_jax.checkpoint import given_overrides, load_model
from marco_jax.compile_cache import enable_compilation_cache
from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.infer.generate import upcast_weights_warning
from marco_jax.infer.text import generate_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m marco_jax.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="converted checkpoint dir (model_config.json + params/) or a training "
                   "workdir (its latest step)")
    p.add_argument("--prompt", required=True, action="append",
                   help="prompt text; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="render prompts as ChatML user turns")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: the checkpoint's config)")
    p.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default=None,
                   help="matmul operand dtype, fp32 accumulation (bfloat16: AMX on CPUs that "
                   "have it; default: the checkpoint's config)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.system is not None and not args.chat:
        print("error: --system needs --chat", file=sys.stderr)
        return 2
    enable_compilation_cache()  # a second call on the same model loads the compiled decode loop
    try:
        model = load_model(args.checkpoint, **given_overrides(
            dtype=args.dtype, matmul_dtype=args.matmul_dtype))
    except (FileNotFoundError, ValueError) as e:  # not a converted checkpoint / run workdir
        print(f"error: --checkpoint: {e}", file=sys.stderr)
        return 2
    warning = upcast_weights_warning(model, "--matmul-dtype")
    if warning:
        print(warning, file=sys.stderr)
    try:
        texts = generate_text(model, get_tokenizer(), args.prompt,
                              max_new_tokens=args.max_new_tokens, chat=args.chat,
                              system=args.system, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, rng=args.seed)
    except ValueError as e:  # bad sampling settings, prompt too long for the model
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"=== [{i}] {args.prompt[i]!r}")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
