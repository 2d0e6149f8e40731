"""Calls into plugin code (environment episodes) off the caller's thread, each with its own time limit, so a slow or
raising call becomes a result to report, never a crash or a hang of the run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CallResult(Generic[T]):
    """What one call gave: its value, the exception it raised, or that it overran its time limit."""

    value: T | None = None
    error: BaseException | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class _Task:
    __slots__ = ("abandoned", "done", "error", "fn", "started", "value")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.started: float | None = None
        self.done = False
        self.abandoned = False
        self.value: object = None
        self.error: BaseException | None = None


class DeadlineCalls:
    """Runs batches of calls on `workers` daemon threads; each call may run `timeout_s` from the moment it starts.

    A Python thread cannot be stopped, so a call that overruns is *abandoned*: its result is dropped, its worker
    is replaced (the batch goes on at full width), and the thread exits when the call returns, if it ever does.
    Daemon threads never keep the process alive at exit. `abandoned` counts such calls: code that may run away
    (tools running model-written code) must bound itself, e.g. in a subprocess with limits.
    """

    def __init__(self, workers: int, timeout_s: float, *, name: str = "rlx-env") -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"DeadlineCalls needs workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        self.timeout_s = timeout_s
        self.name = name
        self.abandoned = 0
        self._queue: deque[_Task | None] = deque()
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._workers = 0
        self._wanted = workers

    def run(self, fns: Sequence[Callable[[], T]]) -> list[CallResult[T]]:
        """Call every fn (in parallel, up to `workers` at once); results in order, once each is done or overran."""
        tasks = [_Task(fn) for fn in fns]
        with self._cond:
            while self._workers < min(self._wanted, len(tasks)):
                self._spawn()
            self._queue.extend(tasks)
            self._cond.notify_all()
            pending = list(tasks)
            while pending:
                now = time.monotonic()
                still = []
                for task in pending:
                    if task.done:
                        continue
                    if task.started is not None and now - task.started >= self.timeout_s:
                        task.abandoned = True  # its thread leaves when (if) the call returns
                        self.abandoned += 1
                        self._workers -= 1
                        self._spawn()
                        continue
                    still.append(task)
                pending = still
                if pending:
                    starts = [t.started for t in pending if t.started is not None]
                    wait = self.timeout_s if not starts else max(0.0, min(starts) + self.timeout_s - now)
                    self._cond.wait(timeout=wait + 1e-3)
        return [
            CallResult(timed_out=True) if t.abandoned else CallResult(value=t.value, error=t.error)  # type: ignore[arg-type]
            for t in tasks
        ]

    def _spawn(self) -> None:
        self._workers += 1
        threading.Thread(target=self._work, name=f"{self.name}-{next(self._ids)}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                task = self._queue.popleft()
                if task is None:
                    self._workers -= 1
                    return
                task.started = time.monotonic()
            try:
                task.value = task.fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller as this call's result
                task.error = exc
            with self._cond:
                task.done = True
                self._cond.notify_all()
                if task.abandoned:
                    return

    def close(self) -> None:
        """Let idle workers exit (busy or abandoned ones exit when their call returns)."""
        with self._cond:
            self._queue.extend([None] * self._workers)
            self._cond.notify_all()
