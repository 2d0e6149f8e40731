"""A pool of verifier processes with a hard per-sample time limit: a stuck worker is killed, a dead one replaced.

Two limits: inside the worker, `grade` stops Python code after `timeout_s` (a signal); the parent kills a
worker that has not answered after `timeout_s + kill_grace_s` (C code that no signal interrupts).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from rlx.interfaces import ScoreStatus
from rlx_math.grading import GradeOptions, GradingTimeout, Verdict, grade_verdict

logger = logging.getLogger(__name__)

GradeFn = Callable[[str, str, GradeOptions], ScoreStatus | Verdict]
"""(gold, completion, options) -> Verdict (or a bare status). A module-level function, so workers can import it."""


def _as_verdict(result: ScoreStatus | Verdict) -> Verdict:
    return result if isinstance(result, Verdict) else Verdict(result, "custom")


# Workers forked from the forkserver inherit these modules already imported and warmed up.
_PRELOAD = ["rlx_math._worker_preload"]


def _worker_main(conn: Connection, grade_fn: GradeFn, options: GradeOptions) -> None:
    """Worker loop: receive (index, gold, completion), send (index, verdict); exit on None or a closed pipe."""
    # Ctrl-C goes to the whole process group: the parent handles it and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from rlx_math.grading import warm_up

    warm_up()
    try:
        conn.send("ready")
    except (BrokenPipeError, OSError):
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, gold, completion = message
        try:
            verdict = _as_verdict(grade_fn(gold, completion, options))
        except GradingTimeout:  # the timer fired between grading and cancelling it
            verdict = Verdict("timeout", "timeout")
        except Exception:  # noqa: BLE001 - a custom grade_fn that raises still yields a counted error
            verdict = Verdict("error", "custom")
        try:
            conn.send((index, verdict))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One verifier process, its end of the pipe, and the task it is busy with (if any)."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: int | None = None
        self.deadline = 0.0
        self.ready = False  # set when the worker has imported and warmed up math-verify
        self.started = time.monotonic()

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2.0)
        self.conn.close()


class VerifierPool:
    """Grades (gold, completion) pairs in `num_workers` processes; `num_workers=0` grades in-process.

    Statuses are returned in input order. A sample whose worker exceeds `timeout_s + kill_grace_s`
    gets "timeout" and the worker is replaced; a sample whose worker dies gets "error" and the worker
    is replaced. Workers start on first use; `close()` stops them.
    """

    def __init__(
        self,
        num_workers: int,
        options: GradeOptions,
        *,
        kill_grace_s: float = 1.0,
        start_method: str = "forkserver",
        grade_fn: GradeFn = grade_verdict,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.options = options
        self.kill_grace_s = kill_grace_s
        self.grade_fn = grade_fn
        if start_method not in multiprocessing.get_all_start_methods():
            start_method = "spawn"  # forkserver does not exist on Windows
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(_PRELOAD)
        self.startup_timeout_s = 120.0
        self.max_failed_starts = 3
        self._failed_starts = 0
        self._workers: list[_Worker] = []
        self.events: Counter[str] = Counter()  # worker_killed, worker_died, worker_started
        self._closed = False

    # ------------------------------------------------------------------------------------------ workers

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.grade_fn, self.options), daemon=True, name="rlx-math-verifier"
        )
        process.start()
        child_conn.close()  # the parent keeps only its end, so a dead worker shows up as EOF
        self.events["worker_started"] += 1
        return _Worker(process, parent_conn)

    def _replace(self, worker: _Worker, *, kill: bool) -> None:
        worker.stop(kill=kill)
        self._workers[self._workers.index(worker)] = self._start_worker()

    # ------------------------------------------------------------------------------------------ grading

    def grade(self, pairs: Sequence[tuple[str, str]]) -> list[ScoreStatus]:
        """Status of each (gold, completion) pair, in order."""
        return [verdict.status for verdict in self.grade_verdicts(pairs)]

    def grade_verdicts(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Verdict (status and the step that decided it) of each (gold, completion) pair, in order.

        A worker killed at the hard limit gives Verdict("timeout", "killed"); one that died, ("error", "crashed").
        """
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        if not pairs:
            return []
        if self.num_workers == 0:
            return [self._grade_inline(gold, completion) for gold, completion in pairs]
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())
        results: list[Verdict | None] = [None] * len(pairs)
        pending = deque(range(len(pairs)))
        hard_limit = self.options.timeout_s + self.kill_grace_s
        while pending or any(w.task is not None for w in self._workers):
            for worker in list(self._workers):
                if worker.ready and worker.task is None and pending:
                    index = pending.popleft()
                    try:
                        worker.conn.send((index, *pairs[index]))
                    except (BrokenPipeError, OSError):  # died while idle: replace it, the task waits
                        pending.appendleft(index)
                        self.events["worker_died"] += 1
                        self._replace(worker, kill=True)
                        continue
                    worker.task = index
                    worker.deadline = time.monotonic() + hard_limit
            # the time limit starts when a task is sent, so only warmed-up workers get tasks
            watched = [w for w in self._workers if w.task is not None or not w.ready]
            if not watched:
                continue
            deadlines = [w.deadline if w.ready else w.started + self.startup_timeout_s for w in watched]
            wait_s = max(0.0, min(deadlines) - time.monotonic())
            ready = set(wait([w.conn for w in watched] + [w.process.sentinel for w in watched], timeout=wait_s))
            now = time.monotonic()
            for worker in watched:
                if not worker.ready:
                    self._check_startup(worker, ready, now)
                    continue
                index = worker.task
                assert index is not None
                if worker.conn in ready or worker.process.sentinel in ready:
                    try:
                        if not worker.conn.poll():
                            raise EOFError
                        got_index, verdict = worker.conn.recv()
                    except (EOFError, OSError):
                        results[index] = Verdict("error", "crashed")  # e.g. a segfault, the OOM killer
                        self.events["worker_died"] += 1
                        logger.warning("rlx-math: a verifier process died on sample %d; replacing it", index)
                        self._replace(worker, kill=True)
                        continue
                    results[got_index] = verdict
                    worker.task = None
                    if verdict.status == "timeout":
                        # a signal interrupted sympy/antlr at an arbitrary point: start from a clean process
                        self._replace(worker, kill=False)
                elif now >= worker.deadline:
                    results[index] = Verdict("timeout", "killed")
                    self.events["worker_killed"] += 1
                    self._replace(worker, kill=True)
        return [verdict if verdict is not None else Verdict("error", "crashed") for verdict in results]

    def worker_pids(self) -> list[int]:
        """Process ids of the running verifier processes (empty before first use and after close)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _check_startup(self, worker: _Worker, ready: set[object], now: float) -> None:
        """Mark a starting worker ready; replace one that died starting; fail loudly if starts keep failing."""
        if worker.conn in ready or worker.process.sentinel in ready:
            try:
                if worker.conn.poll() and worker.conn.recv() == "ready":
                    worker.ready = True
                    self._failed_starts = 0
                    return
            except (EOFError, OSError):
                pass
            self._failed_starts += 1
            self.events["worker_died"] += 1
            if self._failed_starts >= self.max_failed_starts:
                code = worker.process.exitcode
                self.close()
                raise RuntimeError(
                    f"rlx-math: {self._failed_starts} verifier processes in a row failed to start (last exit code "
                    f"{code}); check that math-verify imports in a fresh Python: python -c 'import math_verify'"
                )
            self._replace(worker, kill=True)  # killed from outside while starting (e.g. the OOM killer)
            return
        if now >= worker.started + self.startup_timeout_s:
            self.close()
            raise RuntimeError(f"rlx-math: a verifier process did not start within {self.startup_timeout_s:.0f} s")

    def _grade_inline(self, gold: str, completion: str) -> Verdict:
        try:
            return _as_verdict(self.grade_fn(gold, completion, self.options))
        except GradingTimeout:
            return Verdict("timeout", "timeout")
        except Exception:  # noqa: BLE001
            return Verdict("error", "custom")

    def close(self) -> None:
        """Stop every worker (politely, then by force). Safe to call twice."""
        self._closed = True
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(kill=worker.task is not None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
            pass
