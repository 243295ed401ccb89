"""The one training loop, for every objective (CPT, SFT, DPO): build (mesh, state, data, step),
restore or initialise, run, and let small hooks do the rest.

    summary = train(experiment, workdir)                        # CPT
    summary = train(experiment, workdir, objective=SFT(...))    # any objective

The loop itself only steps: fetch a batch, run the jitted step, hand the step's sums to the
hooks. Hooks (`marco_jax.train.hooks`) log, evaluate, checkpoint, watch for preemption and for
non-finite steps. Restart-safe: on start it restores the newest readable checkpoint in
`<workdir>/checkpoints` (params, optimizer state and the data iterator's position), so a killed
run restarted with the same command continues exactly; steps after the last checkpoint are
recomputed with the same batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from marco_jax.checkpoint.layout import layout_metadata
from marco_jax.checkpoint.load import params_location
from marco_jax.checkpoint.run import RunCheckpointer, is_run_workdir
from marco_jax.config import Experiment, to_experiment
from marco_jax.data import pipeline
from marco_jax.model.config import Qwen2Config, from_experiment
from marco_jax.model.init import abstract_model
from marco_jax.parallel import batch_sharding, build_mesh, pure_dict_shardings, with_shardings
from marco_jax.parallel.constraints import trace_under_mesh
from marco_jax.train import hooks as H
from marco_jax.train.init import initial_params
from marco_jax.train.lm import LanguageModeling
from marco_jax.train.objective import Objective
from marco_jax.train.optimizer import make_optimizer, make_schedule
from marco_jax.train.state import TrainState, abstract_train_state, train_state_shardings
from marco_jax.train.step import jit_train_step, make_eval_step, make_train_step

IteratorFactory = Callable[[Experiment, int, int], tuple[Any, Any]]


def default_iterators(config: Experiment, process_index: int, process_count: int
                      ) -> tuple[Any, Any]:
    """(train iterator, held-out iterator or None) from marco_jax.data.pipeline."""
    train_it = pipeline.make_train_iterator(config, process_index, process_count)
    eval_it = None
    if config.train.eval_every > 0:
        eval_it = pipeline.make_eval_iterator(config, process_index, process_count)
    return train_it, eval_it


def check_setup(config: Experiment, model_cfg: Qwen2Config, workdir: str, mesh: Any) -> None:
    """Refuse what would fail late (after data and model set-up) with one line each."""
    paths = {"--workdir": workdir, "train.init_from": config.train.init_from,
             "data.sources_dir": config.data.sources_dir}
    bad = [f"{k}={v}" for k, v in paths.items() if "YOUR_BUCKET" in str(v)]
    if bad:
        raise ValueError(f"placeholder paths {bad}: set BUCKET in configs/cpt_recipe.py or "
                         "override them on the command line (--config.train.init_from=...)")
    if config.data.seq_len > model_cfg.max_position_embeddings:
        raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the model's "
                         f"max_position_embeddings={model_cfg.max_position_embeddings}")
    rows = dict(mesh.shape).get("data", 1) * dict(mesh.shape).get("fsdp", 1)
    micro = config.data.global_batch_size // config.optim.grad_accum_steps
    if micro % rows:
        raise ValueError(f"data.global_batch_size={config.data.global_batch_size} / "
                         f"optim.grad_accum_steps={config.optim.grad_accum_steps} = {micro} rows "
                         f"per micro-batch is not divisible by the {rows} data-parallel shards "
                         f"of mesh {dict(mesh.shape)}")
    init_from = config.train.init_from
    if init_from and not is_run_workdir(workdir):  # a fresh run reads it
        try:
            params_location(init_from)
        except FileNotFoundError as e:  # "<path>: neither a converted checkpoint nor ..."
            raise ValueError(f"train.init_from={e}") from None
    if jax.process_index() == 0 and not str(workdir).startswith("gs://"):
        root = epath.Path(workdir)
        probe = root / ".write_test"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"--workdir {workdir} is not writable ({e.strerror})") from None


@dataclasses.dataclass
class Run:
    """What hooks see: the config, the live state, the iterators and the plumbing."""

    config: Experiment
    workdir: str
    objective: Objective
    model_config: Qwen2Config
    mesh: Any
    state: TrainState
    train_it: Any
    eval_it: Any
    checkpointer: RunCheckpointer
    meta: dict
    start_step: int
    total_steps: int
    data_sharding: Any
    reference: Any = None
    eval_fn: Callable | None = None
    step: int = 0
    writer: Any = None  # the Logging hook's MetricsWriter (process 0 writes)
    clock_reset: bool = False  # set after an eval so throughput excludes it
    status: str = "done"
    stop: bool = False
    summary: dict = dataclasses.field(default_factory=dict)

    def global_batch(self, host_batch: dict) -> dict:
        return to_global_batch(host_batch, self.objective.batch_keys, self.data_sharding)

    def save(self, step: int, force: bool = False) -> bool:
        config = json.loads(json.dumps(dataclasses.asdict(self.config), default=str))
        return self.checkpointer.save(step, self.state.params, self.state.opt_state,
                                      self.train_it.get_state(), self.meta, config, force=force)


def to_global_batch(batch: dict, keys: tuple[str, ...], sharding: Any) -> dict:
    """Host-local numpy rows -> global jax arrays laid out by `sharding` (ints as int32, floats
    as float32)."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"data iterator batch lacks {missing}; it has {sorted(batch)}")
    out = {}
    for k in keys:
        a = np.asarray(batch[k])
        a = a.astype(np.float32 if np.issubdtype(a.dtype, np.floating) else np.int32, copy=False)
        out[k] = jax.make_array_from_process_local_data(sharding, a)
    return out


def train(config: Any, workdir: str, *, objective: Objective | None = None,
          iterators: IteratorFactory | None = None, progress: bool | None = None,
          devices: list[Any] | None = None, extra_hooks: list[H.Hook] = ()) -> dict[str, Any]:
    """Run (or resume) `config` in `workdir`; returns a summary. `objective` defaults to CPT's
    language modelling over the iterator's sources; `iterators(config, process_index,
    process_count) -> (train, held-out or None)` replaces the data pipeline (tests, SFT, DPO);
    `devices`: the mesh's devices (default: all)."""
    config = to_experiment(config)
    model_cfg = from_experiment(config.model)
    mesh = build_mesh(config.mesh.ici, config.mesh.dcn, devices)
    check_setup(config, model_cfg, workdir, mesh)
    total = config.train.steps
    graphdef, abstract = abstract_model(model_cfg)
    param_shardings = pure_dict_shardings(abstract, mesh)
    tx = make_optimizer(config.optim, total)
    abstract_state = abstract_train_state(nnx.to_pure_dict(abstract), tx)
    state_shardings = train_state_shardings(abstract_state, param_shardings, mesh, tx)
    data_sharding = batch_sharding(mesh)

    train_it, eval_it = (iterators or default_iterators)(config, jax.process_index(),
                                                         jax.process_count())
    source_names = list(getattr(train_it, "source_names", []))
    if objective is None:
        objective = LanguageModeling(source_names, config.train.loss_chunk)

    checkpointer = RunCheckpointer(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    meta = layout_metadata(model_cfg, abstract_state.params, source_names)
    target = with_shardings(abstract_state, state_shardings)
    restored = checkpointer.restore_latest(target.params, target.opt_state, meta)
    if restored is not None:
        start, params, opt_state, data_state = restored
        train_it.set_state(data_state)
        state = TrainState(step=jax.device_put(np.int32(start), state_shardings.step),
                           params=params, opt_state=opt_state)
    else:
        start = 0
        params = initial_params(config.train.init_from, model_cfg, mesh, param_shardings,
                                config.train.seed)
        state = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=state_shardings)(params)

    reference = None
    if objective.needs_reference:
        reference = initial_params(config.train.init_from, model_cfg, mesh, param_shardings,
                                   config.train.seed)
    schedule = make_schedule(config.optim, total)
    step_fn = jit_train_step(
        make_train_step(graphdef, tx, objective, schedule, config.optim.grad_accum_steps),
        state_shardings, data_sharding, mesh, param_shardings if objective.needs_reference
        else None)
    run = Run(config=config, workdir=str(workdir), objective=objective, model_config=model_cfg,
              mesh=mesh, state=state, train_it=train_it, eval_it=eval_it,
              checkpointer=checkpointer, meta=meta, start_step=start, total_steps=total,
              data_sharding=data_sharding, reference=reference,
              eval_fn=jax.jit(trace_under_mesh(make_eval_step(graphdef, objective), mesh)),
              step=start)
    hooks: list[H.Hook] = [H.Logging(progress), *extra_hooks]
    if eval_it is not None and config.train.eval_every > 0:
        hooks.append(H.HeldOutEval(config.train.eval_every, config.eval.batches))
    hooks += [H.BadStepGuard(config.train.max_bad_steps), H.Preemption(),
              H.Checkpointing(config.checkpoint.every), H.RunReport()]
    return run_loop(run, step_fn, hooks)


def run_loop(run: Run, step_fn: Callable, hooks: list[H.Hook]) -> dict[str, Any]:
    for hook in hooks:
        hook.on_start(run)
    try:
        while run.step < run.total_steps and not run.stop:
            batch = run.global_batch(next(run.train_it))
            extra = () if run.reference is None else (run.reference,)
            run.state, sums = step_fn(run.state, batch, *extra)
            run.step += 1
            for hook in hooks:
                hook.after_step(run, sums)
    finally:
        for hook in reversed(hooks):
            hook.on_end(run)
        run.checkpointer.close()
    return {"status": run.status, "step": run.step, "start_step": run.start_step,
            "workdir": str(run.workdir), **run.summary}
