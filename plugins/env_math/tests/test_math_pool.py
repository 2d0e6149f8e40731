"""The verifier pool: hard per-sample time limit, dead workers replaced, scoring goes on, close() stops all.

The grade hooks below are module-level so the worker processes can import them; they simulate what real
pathological inputs do (C code that ignores signals, a crashing parser) on cue.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rlx_math.grading import GradeOptions, Verdict, grade
from rlx_math.pool import VerifierPool

# far past every limit below, yet finite: a pool that failed to cut the hang would get "stuck" back, not "timeout",
# so the failure shows as a wrong status instead of a hung test
HANG_S = 60.0


def hang_or_grade(gold: str, completion: str, options: GradeOptions) -> str:
    """'HANG' blocks SIGALRM and sleeps (like C code no signal interrupts); 'CRASH' kills the worker."""
    if completion == "HANG":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(HANG_S)
        return "stuck"
    if completion == "CRASH":
        os._exit(3)
    if completion == "RAISE":
        raise RuntimeError("parser bug")
    return grade(gold, completion, options)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def test_hanging_verification_is_killed_and_scoring_goes_on() -> None:
    pool = VerifierPool(1, GradeOptions(timeout_s=0.5), kill_grace_s=0.5, grade_fn=hang_or_grade)
    try:
        pool.grade([("1", "\\boxed{1}")])  # start and warm up the worker outside the timed part
        (first_pid,) = pool.worker_pids()
        verdicts = pool.grade_verdicts([("5", "\\boxed{5}"), ("5", "HANG"), ("5", "\\boxed{5}"), ("7", "\\boxed{6}")])
        assert [v.status for v in verdicts] == ["correct", "timeout", "correct", "wrong"]  # cut, so not "stuck"
        assert verdicts[1] == Verdict("timeout", "killed")  # by the pool's hard limit
        assert pool.events["worker_killed"] == 1
        assert pool.worker_pids() != [first_pid]
        assert _alive([first_pid]) == []
    finally:
        pool.close()


def test_soft_timeout_inside_worker_on_real_pathological_latex() -> None:
    # 9^(9^(9^9)) makes sympy compute forever (the fast paths, off here, rule it out without sympy);
    # the worker's own timer stops it before the hard kill
    pool = VerifierPool(1, GradeOptions(timeout_s=1.0, fast_paths=False), kill_grace_s=30.0)
    try:
        verdicts = pool.grade_verdicts([("5", "\\boxed{9^{9^{9^{9}}}}"), ("5", "\\boxed{5}")])
        assert [v.status for v in verdicts] == ["timeout", "correct"]
        assert verdicts[0] == Verdict("timeout", "timeout")  # the worker's own timer, not the kill ("killed")
        assert pool.events["worker_killed"] == 0
    finally:
        pool.close()


def test_dead_worker_is_replaced_and_counts_as_error() -> None:
    pool = VerifierPool(2, GradeOptions(timeout_s=2.0), grade_fn=hang_or_grade)
    try:
        statuses = pool.grade([("1", "\\boxed{1}"), ("1", "CRASH"), ("2", "\\boxed{2}"), ("3", "RAISE"), ("4", "4")])
        assert statuses == ["correct", "error", "correct", "error", "correct"]
        assert pool.events["worker_died"] == 1
        assert len(_alive(pool.worker_pids())) == 2
        # a worker killed from outside while idle is replaced at the next batch
        victim = pool._workers[0].process  # white-box: kill it behind the pool's back
        victim.kill()
        victim.join()
        assert pool.grade([("1", "\\boxed{1}"), ("2", "\\boxed{2}"), ("3", "\\boxed{3}")]) == ["correct"] * 3
    finally:
        pool.close()


def test_close_stops_every_worker() -> None:
    pool = VerifierPool(2, GradeOptions(timeout_s=2.0))
    pool.grade([("1", "\\boxed{1}"), ("2", "\\boxed{2}")])
    pids = pool.worker_pids()
    assert len(_alive(pids)) == 2
    pool.close()
    pool.close()  # idempotent
    assert _alive(pids) == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.grade([("1", "1")])


def test_inline_mode_grades_in_process() -> None:
    pool = VerifierPool(0, GradeOptions(timeout_s=1.0, fast_paths=False), grade_fn=hang_or_grade)
    assert pool.grade([("1", "\\boxed{1}"), ("1", "RAISE"), ("2", "\\boxed{9^{9^{9^{9}}}}")]) == [
        "correct",
        "error",
        "timeout",
    ]
    assert pool.worker_pids() == []
    pool.close()


def test_empty_batch() -> None:
    pool = VerifierPool(1, GradeOptions())
    assert pool.grade([]) == []
    assert pool.worker_pids() == []  # nothing started for nothing
    pool.close()


def test_worker_killed_while_starting_is_replaced() -> None:
    pool = VerifierPool(1, GradeOptions(timeout_s=2.0))
    try:
        pool._workers.append(pool._start_worker())  # white-box: a worker that has not reported ready yet
        pool._workers[0].process.kill()
        assert pool.grade([("1", "\\boxed{1}")]) == ["correct"]
        assert pool.events["worker_died"] == 1 and pool.events["worker_started"] == 2
    finally:
        pool.close()


def test_workers_that_cannot_start_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import shutil
    import sys

    # a grade function whose module is gone by the time the workers import it: every start fails
    (tmp_path / "vanishing_grader.py").write_text("def grade(gold, completion, options):\n    return 'correct'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("vanishing_grader")
    (tmp_path / "vanishing_grader.py").unlink()
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    pool = VerifierPool(1, GradeOptions(timeout_s=2.0), grade_fn=module.grade)
    try:
        with pytest.raises(RuntimeError, match="3 verifier processes in a row failed to start"):
            pool.grade([("1", "1")])
        assert pool.worker_pids() == []
    finally:
        pool.close()
        sys.modules.pop("vanishing_grader", None)
