"""The loop's hooks: logging, held-out eval, checkpoints, preemption, the bad-step guard and the
run report. Each is small and owns one concern; `marco_jax.train.loop` calls `on_start`,
`after_step` (after every step, with the step's device sums) and `on_end` (also on errors).

Only `Logging` pulls sums to the host, and only at log steps, so the device runs ahead between
log lines; the other hooks read what it pulled (`run.summary["last"]`).
"""

from __future__ import annotations

import json
import signal
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from etils import epath

from marco_jax.train.flops import peak_flops_per_device
from marco_jax.train.metrics import MetricsWriter, SumWindow
from marco_jax.train.step import STEP_SCALARS

if TYPE_CHECKING:  # the loop module imports this one
    from marco_jax.train.loop import Run

EXIT_RUN_FAILED = 1  # the run itself stopped (non-finite steps)
EXIT_CHECKPOINT_FAILED = 3  # a checkpoint could not be written, even on retry


class TooManyBadSteps(RuntimeError):
    pass


class CheckpointSaveFailed(RuntimeError):
    pass


class Hook:
    def on_start(self, run: Run) -> None:
        pass

    def after_step(self, run: Run, sums: dict) -> None:
        pass

    def on_end(self, run: Run) -> None:
        pass


def is_log_step(run: Run) -> bool:
    return run.step % run.config.train.log_every == 0 or run.step == run.total_steps


class Logging(Hook):
    """Window sums -> the objective's figures + lr, grad norm, tokens/s and MFU, to TensorBoard,
    metrics.jsonl, the progress bar (or a line per log step off a terminal)."""

    def __init__(self, progress: bool | None = None):
        self.progress = progress

    def on_start(self, run: Run) -> None:
        self.writer = MetricsWriter(run.workdir, enabled=jax.process_index() == 0,
                                    total_steps=run.total_steps, start_step=run.start_step,
                                    progress=self.progress)
        run.writer = self.writer
        self.window, self.pending = SumWindow(), []
        data = run.config.data
        self.tokens_per_step = data.global_batch_size * data.seq_len
        self.flops_per_token = run.model_config.train_flops_per_token(data.seq_len)
        self.peak, source = peak_flops_per_device(run.config.train.peak_flops)
        self.devices = run.mesh.size
        self.timer_steps, self.timer_start = 0, None
        self.writer.echo(
            f"model {run.model_config.num_params():,} params; objective {run.objective.name}; "
            f"mesh {dict(run.mesh.shape)}; batch {data.global_batch_size}x{data.seq_len}; "
            f"steps {run.start_step}->{run.total_steps}; MFU peak {self.peak:.3g} FLOP/s/device "
            f"({source})")

    def restart_timer(self) -> None:
        """Leave compiles and evals out of the throughput figures."""
        self.timer_steps, self.timer_start = 0, time.perf_counter()

    def after_step(self, run: Run, sums: dict) -> None:
        self.pending.append(sums)
        if run.clock_reset:  # an eval ran after the previous step: keep it out of tokens/s
            run.clock_reset = False
            self.restart_timer()
        if self.timer_start is None:  # the first step compiles
            jax.block_until_ready(sums)
            self._drain()
            run.summary.setdefault("first_loss", self._loss_of(run, self.window))
            self.restart_timer()
        else:
            self.timer_steps += 1
        if not is_log_step(run):
            return
        last = self._drain()
        elapsed = time.perf_counter() - self.timer_start
        scalars = run.objective.metrics(self.window.sums)
        scalars.update({k: float(last[k]) for k in STEP_SCALARS})
        if self.timer_steps and elapsed > 0:
            tps = self.timer_steps * self.tokens_per_step / elapsed
            scalars["tokens_per_s"] = tps
            scalars["mfu"] = self.flops_per_token * tps / (self.peak * self.devices)
        bad = getattr(run.train_it, "bad_records", None)
        for task, reasons in (bad() if callable(bad) else {}).items():
            for reason, n in reasons.items():  # records replaced so far (this host's count)
                scalars[f"bad_records/{task}/{reason}"] = float(n)
        run.summary["last"] = {k: float(last[k]) for k in STEP_SCALARS}
        if "loss" in scalars:
            run.summary["last_loss"] = scalars["loss"]
        self.writer.write(run.step, scalars)
        self.writer.progress(run.step, scalars.get("loss"))
        if self.writer.bar is None:
            extra = (f" tok/s {scalars['tokens_per_s']:.0f} mfu {scalars['mfu']:.1%}"
                     if "mfu" in scalars else "")
            self.writer.echo(f"step {run.step}/{run.total_steps} loss {scalars.get('loss', 0):.4f}"
                             f" lr {scalars['lr']:.3g} gnorm {scalars['grad_norm']:.3g}{extra}")
        self.window.reset()
        self.restart_timer()

    def _drain(self) -> dict:
        """Pull pending sums to the host into the window; the latest step's sums."""
        host = jax.device_get(self.pending)
        self.pending = []
        for s in host:
            self.window.add({k: v for k, v in s.items() if k not in STEP_SCALARS})
        if host:
            self.latest = host[-1]
        return self.latest

    @staticmethod
    def _loss_of(run: Run, window: SumWindow) -> float | None:
        return run.objective.metrics(window.sums).get("loss")

    def on_end(self, run: Run) -> None:
        if jax.process_index() == 0 and run.step > run.start_step:
            run.summary["loss_curve"] = self.writer.loss_curve()
        self.writer.echo(f"{run.status} at step {run.step}; checkpoints in "
                         f"{run.checkpointer.directory}")
        self.writer.close()


class HeldOutEval(Hook):
    """Held-out figures on the same `batches` batches every time (the iterator is rewound), with
    the objective's own loss; also at step 0 of a fresh run, so curves start from the initial
    weights (for CPT: where each language starts before continued training)."""

    def __init__(self, every: int, batches: int):
        self.every, self.batches = every, batches

    def on_start(self, run: Run) -> None:
        self.start_state = run.eval_it.get_state()
        if run.step == 0:
            self._evaluate(run)

    def after_step(self, run: Run, sums: dict) -> None:
        if run.step % self.every == 0:
            self._evaluate(run)
            run.clock_reset = True

    def _evaluate(self, run: Run) -> None:
        run.eval_it.set_state(self.start_state)
        window = SumWindow()
        for _ in range(self.batches):
            batch = run.global_batch(next(run.eval_it))
            window.add(jax.device_get(run.eval_fn(run.state.params, batch, run.reference)))
        figures = run.objective.metrics(window.sums, prefix="eval_")
        if figures:
            run.writer.write(run.step, figures)
        if "eval_loss" in figures:  # the CLIs' closing line shows it beside the train loss
            run.summary.setdefault("first_eval_loss", figures["eval_loss"])
            run.summary["last_eval_loss"] = figures["eval_loss"]


class BadStepGuard(Hook):
    """Stops the run (after saving) once `max_bad` updates were skipped for non-finite
    gradients; checked at log steps, when the counts reach the host anyway."""

    def __init__(self, max_bad: int):
        self.max_bad = max_bad

    def after_step(self, run: Run, sums: dict) -> None:
        if not is_log_step(run):
            return
        skipped = int(run.summary.get("last", {}).get("skipped_steps", 0))
        if skipped >= self.max_bad:
            run.save(run.step, force=True)
            run.status = "stopped: non-finite steps"
            raise TooManyBadSteps(
                f"{skipped} steps had non-finite gradients (limit train.max_bad_steps="
                f"{self.max_bad}); the run stopped at step {run.step}. Lower optim.peak_lr, check "
                "the data, or resume from an earlier checkpoint.")


class Preemption(Hook):
    """SIGTERM (TPU maintenance / preemption) -> save at the end of the current step and stop
    with status "preempted" (exit 0: the same command resumes)."""

    def on_start(self, run: Run) -> None:
        self.requested = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def after_step(self, run: Run, sums: dict) -> None:
        reached = self.requested
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            reached = reached or multihost_utils.reached_preemption_sync_point(run.step)
        if reached:
            run.save(run.step, force=True)
            run.status, run.stop = "preempted", True

    def on_end(self, run: Run) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Checkpointing(Hook):
    """Periodic (and final) saves. A failed save -- raised by `save` itself, or by a background
    write and surfaced at the next step boundary -- is retried once synchronously for the
    current step; if that fails too the run stops with CheckpointSaveFailed. Orbax commits a
    step only when it is whole, so no partial step is left looking valid."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, run: Run, sums: dict) -> None:
        if not self._healthy(run):
            return  # the synchronous retry just saved this step
        if run.stop:
            return
        if (self.every > 0 and run.step % self.every == 0) or run.step == run.total_steps:
            self._save(run, force=run.step == run.total_steps)

    def _healthy(self, run: Run) -> bool:
        try:
            run.checkpointer.check_for_errors()
            return True
        except Exception as e:  # noqa: BLE001 - any failed background write
            self._retry(run, e)
            return False

    def _save(self, run: Run, force: bool) -> None:
        try:
            run.save(run.step, force=force)
        except Exception as e:  # noqa: BLE001
            self._retry(run, e)

    def _retry(self, run: Run, first: BaseException) -> None:
        retries = run.summary.setdefault("checkpoint_retries", [])
        retries.append({"step": run.step, "error": f"{type(first).__name__}: {first}"[:300]})
        try:
            run.checkpointer.manager.wait_until_finished()
            run.save(run.step, force=True)
            run.checkpointer.manager.wait_until_finished()
            run.checkpointer.check_for_errors()
        except Exception as second:  # noqa: BLE001
            run.status = "stopped: checkpoint save failed"
            raise CheckpointSaveFailed(
                f"saving a checkpoint failed ({first}); the synchronous retry at step "
                f"{run.step} failed too ({second}). Check free space and permissions of "
                f"{run.checkpointer.directory}") from None

    def on_end(self, run: Run) -> None:
        try:
            run.checkpointer.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._retry(run, e)
            return
        self._healthy(run)


class RunReport(Hook):
    """`<workdir>/report.json`: status, steps, checkpoints skipped at restore and why, save
    retries, and the data pipeline's dropped/replaced records by source and reason."""

    def on_end(self, run: Run) -> None:
        if jax.process_index() != 0:
            return
        bad = getattr(run.train_it, "bad_records", None)
        report = {
            "status": run.status, "start_step": run.start_step, "step": run.step,
            "total_steps": run.total_steps, "objective": run.objective.name,
            "skipped_checkpoints": run.checkpointer.skipped,
            "checkpoint_retries": run.summary.get("checkpoint_retries", []),
            "bad_records": bad() if callable(bad) else {},
        }
        run.summary["report"] = report
        path = epath.Path(run.workdir) / "report.json"
        path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)
