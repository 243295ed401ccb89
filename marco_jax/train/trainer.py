"""The training loop: build (mesh, state, data, step), restore or initialise, run, checkpoint, log.

    summary = train(config, workdir)

Restart-safe: on start it restores the latest checkpoint in `<workdir>/checkpoints` (state and the
data iterator's position), so a killed run restarted with the same command continues exactly;
steps after the last checkpoint are recomputed with the same batches. SIGTERM (TPU maintenance /
preemption) makes it save at the end of the current step and return with status "preempted".
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from marco_jax.model.config import from_experiment
from marco_jax.parallel import abstract_model, build_mesh, pure_dict_shardings
from marco_jax.parallel.constraints import trace_under_mesh
from marco_jax.train.checkpointing import Checkpointer, layout_metadata
from marco_jax.train.flops import model_flops_per_token, peak_flops_per_device
from marco_jax.train.init import initial_params
from marco_jax.train.loss import per_source_sums, token_nll
from marco_jax.train.metrics import MetricsWriter, WindowAggregator
from marco_jax.train.optimizer import make_optimizer
from marco_jax.train.state import TrainState, abstract_train_state, train_state_shardings
from marco_jax.train.step import BATCH_KEYS, batch_sharding, jit_train_step, make_train_step

IteratorFactory = Callable[[Any, int, int], Any]


class TooManyBadSteps(RuntimeError):
    pass


def default_iterators(config: Any, process_index: int, process_count: int) -> tuple[Any, Any]:
    """(train iterator, held-out iterator or None) from marco_jax.data.pipeline."""
    from marco_jax.data import pipeline

    train_it = pipeline.make_train_iterator(config, process_index, process_count)
    eval_it = None
    if int(config.train.eval_every) > 0:
        make_eval = getattr(pipeline, "make_eval_iterator", None)
        if make_eval is None:
            raise ValueError("train.eval_every > 0 but marco_jax.data.pipeline has no "
                             "make_eval_iterator")
        eval_it = make_eval(config, process_index, process_count)
    return train_it, eval_it


class _Preemption:
    """SIGTERM sets a flag; the loop saves and stops at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _global_batch(batch: dict, sharding: Any) -> dict:
    """Host-local numpy rows -> global jax arrays laid out by `sharding`."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"data iterator batch lacks {missing}; it has {sorted(batch)}")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k], np.int32))
            for k in BATCH_KEYS}


def make_eval_step(graphdef: nnx.GraphDef, num_sources: int, loss_chunk: int) -> Callable:
    def step(params, batch):
        model = nnx.merge(graphdef, params)
        hidden, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        nll = token_nll(hidden, model.lm_head_kernel(), batch["targets"], loss_chunk)
        mask = batch["loss_mask"].astype(jnp.float32)
        out = {"loss_sum": jnp.sum(nll * mask), "tokens": jnp.sum(mask)}
        if num_sources:
            out["source_loss_sum"], out["source_tokens"] = per_source_sums(
                nll, mask, batch["source_ids"], num_sources)
        return out
    return step


def _evaluate(eval_fn, params, eval_it, start_state, batches, sharding, source_names):
    """Held-out loss on the same `batches` batches every time (the iterator is rewound)."""
    eval_it.set_state(start_state)
    agg = WindowAggregator(source_names)
    for _ in range(batches):
        out = jax.device_get(eval_fn(params, _global_batch(next(eval_it), sharding)))
        tokens = max(float(out["tokens"]), 1.0)
        agg.add({**out, "loss": float(out["loss_sum"]) / tokens})
    if agg.tokens == 0:
        return {}
    loss = agg.loss_sum / agg.tokens
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), **agg.per_source("eval")}


def _refuse_placeholders(config: Any, workdir: str) -> None:
    paths = {"--workdir": workdir, "train.init_from": config.train.init_from,
             "data.sources_dir": config.data.get("sources_dir", "")}
    bad = [f"{k}={v}" for k, v in paths.items() if "YOUR_BUCKET" in str(v)]
    if bad:
        raise ValueError(f"placeholder paths {bad}: set BUCKET in configs/cpt_recipe.py or "
                         "override them on the command line (--config.train.init_from=...)")


def train(config: Any, workdir: str, iterators: Callable[..., tuple[Any, Any]] | None = None,
          progress: bool | None = None, devices: list[Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `config` in `workdir`; returns a summary.
    iterators(config, process_index, process_count) -> (train, held-out or None) replaces the
    data pipeline (tests); devices: the mesh's devices (default: all)."""
    _refuse_placeholders(config, workdir)
    total_steps = int(config.train.steps)
    is_main = jax.process_index() == 0
    model_cfg = from_experiment(config.model)
    mesh = build_mesh(config.mesh, devices)
    graphdef, abstract = abstract_model(model_cfg)
    param_shardings = pure_dict_shardings(abstract, mesh)
    tx = make_optimizer(config.optim, total_steps)
    abstract_state = abstract_train_state(nnx.to_pure_dict(abstract), tx)
    state_shardings = train_state_shardings(abstract_state, param_shardings, mesh, tx)
    data_sharding = batch_sharding(mesh)

    train_it, eval_it = (iterators or default_iterators)(config, jax.process_index(),
                                                         jax.process_count())
    source_names = list(getattr(train_it, "source_names", []))
    eval_start = eval_it.get_state() if eval_it is not None else None

    ckpt = Checkpointer(str(epath.Path(workdir) / "checkpoints"), int(config.checkpoint.keep),
                        bool(config.checkpoint.async_save))
    meta = layout_metadata(model_cfg, abstract_state.params, source_names)
    start = ckpt.latest_step()
    if start is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, state_shardings)
        state, data_state, _ = ckpt.restore(start, target, meta)
        train_it.set_state(data_state)
    else:
        start = 0
        params = initial_params(str(config.train.init_from), model_cfg, mesh, param_shardings,
                                int(config.train.seed), abstract_state, state_shardings)
        state = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=state_shardings)(params)

    step_fn = jit_train_step(make_train_step(graphdef, tx, config, num_sources=len(source_names)),
                             state_shardings, data_sharding, mesh)
    eval_fn = jax.jit(trace_under_mesh(
        make_eval_step(graphdef, len(source_names), int(config.train.loss_chunk)), mesh))

    writer = MetricsWriter(workdir, enabled=is_main, total_steps=total_steps, start_step=start,
                           progress=progress)
    b, t = int(config.data.global_batch_size), int(config.data.seq_len)
    flops_per_token = model_flops_per_token(model_cfg, t)
    peak, peak_source = peak_flops_per_device(float(config.train.get("peak_flops", 0.0)))
    writer.echo(f"model {model_cfg.num_params():,} params; mesh {dict(mesh.shape)}; batch {b}x{t}; "
                f"steps {start}->{total_steps}; MFU peak {peak:.3g} FLOP/s/device "
                f"({peak_source})")

    log_every, every = max(int(config.train.log_every), 1), int(config.checkpoint.every)
    eval_every, max_bad = int(config.train.eval_every), int(config.train.max_bad_steps)
    agg, pending = WindowAggregator(source_names), []
    status, step, first_loss, last_loss = "done", start, None, None
    window_start, window_steps = time.perf_counter(), 0

    def save(step: int, force: bool = False) -> None:
        ckpt.save(step, state, train_it.get_state(), meta, config.to_json_best_effort(),
                  force=force)

    with _Preemption() as preemption:
        while step < total_steps:
            batch = _global_batch(next(train_it), data_sharding)
            state, metrics = step_fn(state, batch)
            step += 1
            pending.append(metrics)
            if step == start + 1:  # keep the compile out of the throughput figures
                jax.block_until_ready(metrics)
                window_start, window_steps, pending_first = time.perf_counter(), 0, pending
                pending = []
                for m in jax.device_get(pending_first):
                    agg.add(m)
                    first_loss = float(m["loss"])
            else:
                window_steps += 1
            if step % log_every == 0 or step == total_steps:
                host = jax.device_get(pending)
                pending = []
                for m in host:
                    agg.add(m)
                last = host[-1] if host else None
                if last is None:
                    last = jax.device_get(metrics)
                elapsed = time.perf_counter() - window_start
                scalars = {"loss": agg.loss_sum / max(agg.tokens, 1.0),
                           "lr": float(last["lr"]), "grad_norm": float(last["grad_norm"]),
                           "skipped_steps": float(last["skipped_steps"]),
                           **agg.per_source("train")}
                if window_steps and elapsed > 0:
                    tps = window_steps * b * t / elapsed
                    scalars["tokens_per_s"] = tps
                    scalars["mfu"] = flops_per_token * tps / (peak * mesh.size)
                last_loss = scalars["loss"]
                writer.write(step, scalars)
                writer.progress(step, last_loss)
                if writer.bar is None:
                    writer.echo(f"step {step}/{total_steps} loss {last_loss:.4f} "
                                f"lr {scalars['lr']:.3g} gnorm {scalars['grad_norm']:.3g}"
                                + (f" tok/s {scalars['tokens_per_s']:.0f} "
                                   f"mfu {scalars['mfu']:.1%}" if "mfu" in scalars else ""))
                agg.reset()
                window_start, window_steps = time.perf_counter(), 0
                if int(last["skipped_steps"]) >= max_bad:
                    save(step, force=True)
                    ckpt.close()
                    writer.close()
                    raise TooManyBadSteps(
                        f"{int(last['skipped_steps'])} steps had non-finite gradients (limit "
                        f"train.max_bad_steps={max_bad}); the run stopped at step {step}. Lower "
                        "optim.peak_lr, check the data, or resume from an earlier checkpoint.")
            if eval_it is not None and eval_every > 0 and step % eval_every == 0:
                ev = _evaluate(eval_fn, state.params, eval_it, eval_start, int(config.eval.batches),
                               data_sharding, source_names)
                writer.write(step, ev)
                window_start, window_steps = time.perf_counter(), 0
            if preemption.reached(step):
                save(step, force=True)
                status = "preempted"
                break
            if (every > 0 and step % every == 0) or step == total_steps:
                save(step, force=step == total_steps)
        ckpt.close()
    curve = writer.loss_curve() if is_main else None
    writer.echo(f"{status} at step {step}; checkpoints in {ckpt.directory}")
    writer.close()
    return {"status": status, "step": step, "start_step": start, "first_loss": first_loss,
            "last_loss": last_loss, "loss_curve": curve, "workdir": str(workdir)}
