"""Background prefetch: the next `ahead` batches are read, tokenized and packed in a thread while
the accelerator runs the current step, so the step never waits on the input pipeline unless the
pipeline is slower than a step.

The checkpointed state is the state AFTER THE LAST CONSUMED batch, never the last produced one:
the producer takes the iterator's host-local `snapshot()` right after preparing each batch and
queues it with the batch; `get_state()` turns the snapshot of the batch last handed out into a
state on the calling (main) thread, where a multi-host run's all-gather (a collective) belongs.
`set_state()` stops the producer, drops what it prepared, restores, and restarts on demand.

Why a thread of our own and not grain's prefetch (`grain.IterDataset.prefetch` /
`mp_prefetch`): grain checkpoints its own per-process iterator state, while ours must be a global
state that restores onto a different host count; wrapping our iterator as a grain dataset would
keep exactly this snapshot-per-batch logic and add nothing. tiktoken releases the GIL, so one
thread overlaps tokenization with the step; multiprocess prefetch would need the iterator's
state to travel between processes for every batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class Prefetcher:
    """Wraps a `TrainIterator` (anything with snapshot/state_from/set_state) with a bounded
    queue of `ahead` prepared batches. Other attributes are the wrapped iterator's."""

    def __init__(self, inner: Any, ahead: int):
        if ahead < 1:
            raise ValueError(f"prefetch ahead must be >= 1, got {ahead}")
        self.inner, self.ahead = inner, ahead
        self._consumed = inner.snapshot()
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def __getattr__(self, name: str) -> Any:  # plan, lanes, counters, source_names, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __iter__(self) -> Prefetcher:
        return self

    def _start(self) -> None:
        q: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def put(item: tuple) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                while not stop.is_set():
                    batch = next(self.inner)
                    put((batch, self.inner.snapshot(), None))
            except BaseException as e:  # handed to the consumer, raised there
                put((None, None, e))

        self._queue, self._stop = q, stop
        self._thread = threading.Thread(target=produce, name="input-prefetch", daemon=True)
        self._thread.start()

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("the prefetcher was closed")
        if self._thread is None:
            self._start()
        batch, snap, error = self._queue.get()
        if error is not None:
            self._halt()
            raise error
        self._consumed = snap
        return batch

    def get_state(self) -> dict[str, Any]:
        """The state after the last batch handed out (a collective on a real multi-host run)."""
        return self.inner.state_from(self._consumed)

    def set_state(self, state: dict[str, Any]) -> None:
        self._halt()
        self.inner.set_state(state)
        self._consumed = self.inner.snapshot()

    def bad_records(self) -> dict[str, dict[str, int]]:
        """Bad-record counts as of the last batch handed out (see TrainIterator.bad_records)."""
        return self._consumed["bad_records"]

    @property
    def step(self) -> int:
        return self._consumed["step"]

    def _halt(self) -> None:
        """Stops the producer and drops the batches it prepared (the inner iterator has run
        ahead of the consumed position; set_state is the only way back)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._queue = self._stop = self._thread = None

    def close(self) -> None:
        self._halt()
        self._closed = True
