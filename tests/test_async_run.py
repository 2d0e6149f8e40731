"""Asynchronous GRPO (`grpo.max_staleness=1`) as a user runs it: the embedded default learns, and a run killed
with SIGKILL in the middle of a step and resumed trains on exactly the prompts an uninterrupted run trains on,
step by step (the producer had drawn ahead; those prompts are drawn again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from rlx.config import build_config
from rlx.metrics import read_metrics
from rlx.plan import resolve_plan
from rlx.run import run

from .conftest import REPO
from .test_run import SMALL, rolling

RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
ASYNC = ["grpo.max_staleness=1", "logging.rollouts_per_step=4", "checkpoint.period=3", "steps=16"]


def _prompt_ids_per_step(out: Path) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for line in (out / "rollouts.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], []).append(record["prompt_id"])
    return steps


def _cli(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rlx.cli", "run", "--config", str(RECIPE), *SMALL, f"output_dir={out}", *overrides]


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_trains_every_prompt_once_in_order(tmp_path):
    straight = tmp_path / "straight"
    run(resolve_plan(build_config(RECIPE, [*SMALL, f"output_dir={straight}", *ASYNC])), console=Console(quiet=True))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, *ASYNC), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:  # kill once step 7 is logged: the checkpoint of step 6 is complete, step 8 (and batch 9) are under way
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = killed / "metrics.jsonl"
            if metrics.is_file() and any(r.get("step", 0) >= 7 for r in read_metrics(metrics)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    logged = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "reward/mean" in r]
    assert 7 <= max(logged) < 16

    summary = run(resolve_plan(build_config(RECIPE, [*SMALL, f"output_dir={killed}", *ASYNC])),
                  console=Console(quiet=True))
    assert summary["final"]["async/staleness_max"] == 1.0
    expected = _prompt_ids_per_step(straight)
    assert sorted(expected) == list(range(1, 17))
    assert _prompt_ids_per_step(killed) == expected


@pytest.mark.slow
def test_embedded_default_learns_with_one_step_off_rollouts(tmp_path):
    """The default run, asynchronous: its 10-step mean reward reaches 0.8 (time_to_reward.py times it beside the
    synchronous loop), and metrics.jsonl carries the staleness and importance-weight metrics."""
    out = tmp_path / "async"
    proc = subprocess.run(
        [sys.executable, "-m", "rlx.cli", "run", f"output_dir={out}", "logging.progress=false", "grpo.max_staleness=1",
         "grpo.mismatch_correction.kind=tis"],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asynchronous, max staleness 1" in " ".join(proc.stdout.split())
    rows = [m for m in read_metrics(out / "metrics.jsonl") if "reward/mean" in m]
    rewards = [m["reward/mean"] for m in rows]
    assert sum(rewards[:10]) / 10 < 0.6, rewards[:10]
    assert max(rolling(rewards)) >= 0.8, rolling(rewards)
    assert all(m["async/staleness_max"] <= 1 and m["async/dropped_stale_groups"] == 0 for m in rows)
    assert all(m["async/staleness_1_frac"] == 1.0 for m in rows[1:])
    assert all(0 < m["mismatch/weight_mean"] <= 2.0 for m in rows)  # tis: weights capped at 2
