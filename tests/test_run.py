"""Whole runs through the CLI's `run()` on the embedded tiny model: learning, exact resume, kill during save,
export round trip, and the three-stage DeepScaleR-shaped flow (each stage from the previous stage's export).

These build the embedded model once per session (cached in the session's RLX_CACHE) and keep runs to a few
steps with small batches, so the whole module takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from rlx.checkpoint import CheckpointManager
from rlx.config import build_config
from rlx.metrics import read_metrics
from rlx.outputs import output_kind
from rlx.plan import resolve_plan
from rlx.run import run

from .conftest import REPO

SMALL = [
    "grpo.prompts_per_step=4",
    "grpo.num_generations=4",
    "grpo.mini_batch_size=8",
    "grpo.max_new_tokens=8",
    "validation.period=0",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.export_hf=false",
    "logging.plot=false",
]
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"


def _run(out: Path, *overrides: str) -> dict:
    cfg = build_config(RECIPE, [*SMALL, f"output_dir={out}", *overrides])
    return run(resolve_plan(cfg), console=Console(quiet=True))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_exact_resume_equals_straight_run(tmp_path):
    straight = tmp_path / "straight"
    _run(straight, "steps=4", "checkpoint.export_hf=true")
    resumed = tmp_path / "resumed"
    _run(resumed, "steps=2")  # stops after 2 steps with a checkpoint, as a killed run would have
    _run(resumed, "steps=4", "checkpoint.export_hf=true")  # same command, more steps: continues from step 2
    a, b = _weights(straight / "hf"), _weights(resumed / "hf")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rewards_a = [m["reward/mean"] for m in read_metrics(straight / "metrics.jsonl")]
    rewards_b = [m["reward/mean"] for m in read_metrics(resumed / "metrics.jsonl")]
    assert rewards_a == rewards_b and len(rewards_a) == 4


@pytest.mark.slow
def test_resume_at_the_end_says_so_instead_of_training_zero_steps(tmp_path):
    out = tmp_path / "run"
    _run(out, "steps=1")
    cfg = build_config(RECIPE, [*SMALL, f"output_dir={out}", "steps=1"])
    console = Console(record=True, width=200)
    run(resolve_plan(cfg), console=console)
    assert "nothing to train" in console.export_text()


_KILL_DURING_SAVE = r"""
import os, sys
from rich.console import Console
import rlx.checkpoint as ckpt
from rlx.config import build_config
from rlx.plan import resolve_plan
from rlx.run import run

saves = {"n": 0}
original = ckpt.CheckpointManager.save
def dying_save(self, step, trainer, run_state, config_yaml):
    saves["n"] += 1
    if saves["n"] == 2:  # the second save: write part of it, then die like a SIGKILL would
        class Half:
            def save_checkpoint(self, path):
                trainer.save_checkpoint(path)
                os._exit(9)
        return original(self, step, Half(), run_state, config_yaml)
    return original(self, step, trainer, run_state, config_yaml)
ckpt.CheckpointManager.save = dying_save
cfg = build_config(sys.argv[1], sys.argv[2:])
run(resolve_plan(cfg), console=Console(quiet=True))
"""


@pytest.mark.slow
def test_kill_during_save_leaves_previous_checkpoint_intact(tmp_path):
    out = tmp_path / "run"
    args = [str(RECIPE), *SMALL, f"output_dir={out}", "steps=4", "checkpoint.period=1"]
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ})
    assert proc.returncode == 9, proc.stderr[-2000:]
    root = out / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == ["step_00000002.tmp"]
    latest = CheckpointManager(root).latest()
    assert latest is not None and latest.step == 1
    # the same command again resumes from step 1 (the half-written step 2 is ignored and cleaned up) and finishes
    _run(out, "steps=4", "checkpoint.period=1")
    steps = [c.step for c in CheckpointManager(root).list()]
    assert steps[-1] == 4 and not list(root.glob("*.tmp"))
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]  # step 2 was not logged twice
    # rollouts.jsonl is truncated like metrics.jsonl: 2 prompts x 4 completions per step, each step once
    rollouts = read_metrics(out / "rollouts.jsonl")
    assert [r["step"] for r in rollouts] == [s for s in (1, 2, 3, 4) for _ in range(8)]
    assert all(isinstance(r["completion"], str) and r["status"] and r["length"] >= 1 for r in rollouts)
    assert rollouts[0]["prompt"].startswith("<|im_start|>") and "=" in rollouts[0]["prompt"]


@pytest.mark.slow
def test_export_round_trip_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    summary = _run(out, "steps=1", "checkpoint.export_hf=true")
    exported = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "rlx.cli", "export", str(out), str(exported)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for f in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (exported / f).is_file(), f
    a = AutoModelForCausalLM.from_pretrained(summary["model"], dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)

    # an earlier rlx export is replaced without asking; a user's folder only with --overwrite
    again = subprocess.run([sys.executable, "-m", "rlx.cli", "export", str(out), str(exported)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    refused = subprocess.run([sys.executable, "-m", "rlx.cli", "export", str(out), str(notes)], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and (notes / "todo.txt").read_text() == "keep me"
    forced = subprocess.run([sys.executable, "-m", "rlx.cli", "export", str(out), str(notes), "--overwrite"],
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr
    assert (notes / "model.safetensors").is_file() and not (notes / "todo.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "notes", "run"]  # no staging folder left


@pytest.mark.slow
def test_three_stage_flow_each_stage_from_previous_export(tmp_path):
    """The DeepScaleR shape on the tiny model: stage 2 and 3 start from the previous stage's best-hf export,
    with the stage-specific changes (longer context, clip-higher, KL on, lower lr)."""
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    _run(s1, "steps=2", "checkpoint.export_hf=true", "grpo.clip_high=0.2", "grpo.kl_coef=0")
    _run(s2, "steps=2", "checkpoint.export_hf=true", f"model={s1 / 'best-hf'}", "model.max_seq_len=96",
         "grpo.clip_high=0.28", "grpo.kl_coef=0.001")
    _run(s3, "steps=2", "checkpoint.export_hf=true", f"model={s2 / 'best-hf'}", "model.max_seq_len=128",
         "grpo.kl_coef=0.0001", "trainer.lr=5e-5")
    for stage, parent in ((s2, s1), (s3, s2)):
        config = (stage / "config.yaml").read_text()
        assert str((parent / "best-hf").resolve()) in config or str(parent / "best-hf") in config
        metrics = read_metrics(stage / "metrics.jsonl")
        assert len(metrics) == 2 and all("train/kl" in m for m in metrics)
    w1, w3 = _weights((s1 / "best-hf").resolve()), _weights(s3 / "hf")
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)  # stages 2-3 trained on top of stage 1
    for stage in (s1, s2, s3):  # each export is marked as rlx's, so a rerun may replace it (and nothing else)
        assert output_kind(stage / "hf") == "hf-export" and output_kind(stage / "best-hf") == "hf-export"
        assert output_kind(stage) == "run" and not [p for p in stage.iterdir() if ".rlx-" in p.name[1:]]


def rolling(values: list[float], window: int = 10) -> list[float]:
    return [sum(values[i - window : i]) / window for i in range(window, len(values) + 1)]


@pytest.mark.slow
def test_embedded_default_run_reaches_target_reward(tmp_path):
    """`rlx run` as a user runs it (the embedded default, through the CLI): the training reward starts low and
    GRPO lifts its 10-step mean to >= 0.8. (How long that takes is measured by benchmarks/time_to_reward.py.)"""
    out = tmp_path / "default"
    proc = subprocess.run([sys.executable, "-m", "rlx.cli", "run", f"output_dir={out}", "logging.progress=false"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting reward (step 1)" in proc.stdout and "model (Hugging Face format)" in proc.stdout
    assert f"plot:{out / 'metrics.png'}" in "".join(proc.stdout.split()) and (out / "metrics.png").is_file()
    rewards = [m["reward/mean"] for m in read_metrics(out / "metrics.jsonl") if "reward/mean" in m]
    assert sum(rewards[:10]) / 10 < 0.6, rewards[:10]
    assert max(rolling(rewards)) >= 0.8, rolling(rewards)
    warmup = json.loads(next(Path(os.environ["RLX_CACHE"]).glob("embedded-tiny-*/warmup.json")).read_text())
    assert 0 < warmup["sampled_accuracy"] < 0.6
    assert (out / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_fresh_start_sets_earlier_checkpoints_aside(tmp_path):
    out = tmp_path / "run"
    _run(out, "steps=1")
    _run(out, "steps=1", "checkpoint.resume=false")
    aside = [p for p in out.iterdir() if p.name.startswith("checkpoints.before-")]
    assert len(aside) == 1 and CheckpointManager(aside[0]).latest().step == 1
    assert [c.step for c in CheckpointManager(out / "checkpoints").list()] == [1]
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1]
    assert len(list(out.glob("metrics.before-*.jsonl"))) == 1  # the earlier run's records, kept aside


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    out = tmp_path / "run"
    keep_both = ["checkpoint.period=1", "checkpoint.keep_best=2", "checkpoint.metric=reward/mean"]
    _run(out, "steps=2", *keep_both)
    state = out / "checkpoints" / "step_00000002" / "run_state.json"
    state.write_text(state.read_text()[:500])
    console = Console(record=True, width=300)
    with caplog.at_level("WARNING", logger="rlx.checkpoint"):
        run(resolve_plan(build_config(RECIPE, [*SMALL, f"output_dir={out}", "steps=3", *keep_both])), console=console)
    assert f"skipping damaged checkpoint step_00000002: {state} is not valid JSON" in caplog.text
    assert f"resumed from {out / 'checkpoints' / 'step_00000001'} (step 1)" in console.export_text()
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads(state.read_text())["step"] == 2  # step 2 was trained again and its checkpoint rewritten


_INTERRUPT_DURING_STEP_2 = r"""
import sys
from rich.console import Console
import rlx.loop
from rlx.config import build_config
from rlx.plan import resolve_plan
from rlx.run import RunInterrupted, run

original = rlx.loop.GRPOLoop.run_step
def run_step(self):
    if self.step == 1:
        raise KeyboardInterrupt  # Ctrl-C in the middle of step 2
    return original(self)
rlx.loop.GRPOLoop.run_step = run_step
try:
    run(resolve_plan(build_config(sys.argv[1], sys.argv[2:])), console=Console(quiet=True))
except RunInterrupted as exc:
    print("MESSAGE", exc)
"""


@pytest.mark.slow
def test_interrupt_during_a_step_names_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_DURING_STEP_2, str(RECIPE), *SMALL, f"output_dir={out}",
                           "steps=3", "checkpoint.period=1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = out / "checkpoints" / "step_00000001"
    assert f"MESSAGE interrupted during step 2; last checkpoint: step 1 ({ckpt}); run the same command again to " \
           "resume from it" in proc.stdout
