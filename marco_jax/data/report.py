"""What a data config will feed the model: mixture table, tokenizer fertility, sample documents.

`mixture_report` runs the real training iterator until it has consumed `examples` examples and
compares the realised token shares with the targets, per group and per task; targets are the
paper's group shares and the temperature formula's per-task values (see `mixtures`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from marco_jax.config.schema import Experiment
from marco_jax.data.pipeline import MixturePlan, TrainIterator, make_train_iterator
from marco_jax.data.plan import data_section
from marco_jax.data.tokenizer import get_tokenizer


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def realise(config: Any, examples: int) -> tuple[MixturePlan, TrainIterator, int]:
    """Runs the single-host iterator until `examples` examples are consumed; returns batches."""
    it = make_train_iterator(config, 0, 1, prefetch=0)
    batches = 0
    while it.counters.examples < examples:
        next(it)
        batches += 1
    return it.plan, it, batches


def mixture_table(plan: MixturePlan, it: TrainIterator) -> str:
    c = it.counters
    tokens = {n: c.tokens_by_task.get(i, 0) for i, n in enumerate(plan.names)}
    ex = {n: c.examples_by_task.get(i, 0) for i, n in enumerate(plan.names)}
    total_tok = sum(tokens.values()) or 1
    out = io.StringIO()
    out.write(f"{'group / task':<22}{'target':>9}{'realised':>10}{'diff':>8}   "
              f"{'examples':>9}{'pool tokens':>14}  {'pool from':<10}{'tok/doc':>8}\n")
    targets = plan.group_shares
    for g, share in targets.items():
        members = [n for n in plan.names if plan.groups[n] == g]
        got = sum(tokens[n] for n in members) / total_tok
        out.write(f"{g:<22}{_pct(share):>9}{_pct(got):>10}{100 * (got - share):+7.2f}p   "
                  f"{sum(ex[n] for n in members):>9}\n")
        for n in members:
            want, got = plan.token_rates[n], tokens[n] / total_tok
            out.write(f"  {n:<20}{_pct(want):>9}{_pct(got):>10}{100 * (got - want):+7.2f}p   "
                      f"{ex[n]:>9}{plan.pools.get(n, float('nan')):>14.4g}  "
                      f"{plan.pool_origin[n]:<10}"
                      f"{plan.mean_tokens[n]:>8.1f}\n")
    return out.getvalue()


def fertility(plan: MixturePlan, docs_per_task: int = 50) -> dict[str, tuple[float, float]]:
    """(tokens per character, tokens per UTF-8 byte) of each web task over evenly spaced docs."""
    tok = get_tokenizer()
    out = {}
    for task in plan.tasks:
        if task.kind != "web":
            continue
        n = len(task.source)
        idx = np.unique(np.linspace(0, n - 1, min(n, docs_per_task)).round().astype(int))
        texts = [task.text(task.source[int(i)]) for i in idx]
        chars = sum(len(t) for t in texts)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        ntok = sum(len(ids) for ids in tok.encode_batch(texts))
        out[task.languages[0]] = (ntok / max(chars, 1), ntok / max(nbytes, 1))
    return out


def samples(plan: MixturePlan, chars: int = 240) -> dict[str, str]:
    """The first document of each task, rendered as the model sees it, cut to `chars`."""
    out = {}
    for task in plan.tasks:
        if task.kind == "seqio":  # a stream of token ids: its first document, decoded
            text = get_tokenizer().decode(task.first_documents(1)[0].tokens.tolist())
            out[task.name] = text if len(text) <= chars else text[:chars] + " [...]"
            continue
        text = task.text(task.source[0])
        out[task.name] = text if len(text) <= chars else text[:chars] + " [...]"
    return out


def mixture_report(config: Experiment | Any, examples: int = 20_000) -> str:
    plan, it, batches = realise(config, examples)
    c = it.counters
    data = data_section(config)
    out = io.StringIO()
    out.write(f"mixture {plan.name}: {len(plan.tasks)} tasks, temperature {plan.temperature}, "
              f"seq_len {data.seq_len}, global batch {data.global_batch_size}, seed {data.seed}\n")
    if plan.missing:
        out.write(f"tasks without a source (left out; a group with none left is dropped): "
                  f"{', '.join(plan.missing)}\n")
    if plan.empty:
        out.write(f"tasks with zero records (left out; their group keeps its share): "
                  f"{len(plan.empty)}: {', '.join(plan.empty)}\n")
    out.write(f"realised over {c.examples} examples in {batches} batches: {c.target_tokens} "
              f"target tokens, {c.padding_tokens} padding "
              f"({c.padding_tokens / max(1, c.padding_tokens + c.target_tokens):.1%}), "
              f"{c.chunked_documents} documents longer than seq_len chunked into {c.chunks} "
              f"pieces, {c.empty_documents} empty documents skipped\n")
    bad = it.bad_records()
    if bad:
        out.write("bad records replaced (data.on_bad_record=skip): " + "; ".join(
            f"{t}: " + ", ".join(f"{n} {why}" for why, n in r.items()) for t, r in bad.items())
            + "\n")
    out.write("\n")
    out.write("share of target tokens (target = group share x temperature weight):\n")
    out.write(mixture_table(plan, it))
    out.write("\ntokenizer fertility (web text):\n")
    out.write(f"{'lang':<6}{'tokens/char':>12}{'tokens/byte':>12}\n")
    for lang, (per_char, per_byte) in fertility(plan).items():
        out.write(f"{lang:<6}{per_char:>12.3f}{per_byte:>12.3f}\n")
    out.write("\nsample document per task:\n")
    for name, text in samples(plan).items():
        out.write(f"--- {name}\n{text}\n")
    return out.getvalue()
