"""Resuming: the saved run config is compared with the new one (incompatible changes refused with a diff, harmless
ones reported); a checkpoint whose run_state.json is damaged is named and skipped for the previous complete one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rlx.checkpoint import CheckpointManager
from rlx.config import build_config
from rlx.errors import ConfigError
from rlx.outputs import mark
from rlx.plan import resolve_plan
from rlx.resume import Change, compare_configs, declared_by_components, same_model, with_current_defaults
from rlx.rundir import RunDir

from .conftest import REPO

RECIPE = REPO / "recipes" / "tiny-cpu.yaml"


def _plan(*overrides: str):
    return resolve_plan(build_config(RECIPE, list(overrides)))


def _saved(plan) -> dict:
    return yaml.safe_load(plan.to_yaml())


# ------------------------------------------------------------------------------------------------ the comparison


def test_incompatible_and_harmless_changes_are_told_apart():
    old = _plan()
    new = _plan("steps=300", "grpo.num_generations=16", "grpo.mini_batch_size=256", "validation.period=10",
                "logging.progress=false", "env.toy.max_operand=20", "env.num_workers=2", "trainer.lr=1e-4", "seed=3",
                "generator.batch_size=64", "cluster.trainer_workers=2", "grpo.max_staleness=1")
    changes = compare_configs(_saved(old), _saved(new), declared=declared_by_components(new))
    assert changes.incompatible == [
        Change("env.toy.max_operand", 9, 20),
        Change("grpo.mini_batch_size", 128, 256),
        Change("grpo.num_generations", 8, 16),
        Change("seed", 0, 3),
    ]
    assert changes.harmless == [
        Change("cluster.trainer_workers", 1, 2),
        Change("env.num_workers", 1, 2),  # the math environment declares it resume-safe
        Change("generator.batch_size", 256, 64),
        Change("grpo.max_staleness", 0, 1),  # the checkpoint's cursor is what was trained on: either way is exact
        Change("logging.progress", True, False),
        Change("steps", 200, 300),
        Change("trainer.lr", 3e-4, 1e-4),
        Change("validation.period", 50, 10),
    ]


def test_another_component_is_one_change_not_a_list_of_options():
    saved = {"env": {"name": "math", "train": "toy", "num_workers": 1}, "trainer": {"name": "fsdp", "lr": 1.0}}
    new = {"env": {"name": "echo", "num_train": 5}, "trainer": {"name": "other", "lr": 1.0}}
    changes = compare_configs(saved, new)
    assert changes.incompatible == [Change("env.name", "math", "echo"), Change("trainer.name", "fsdp", "other")]
    assert changes.harmless == []


def test_settings_added_since_the_checkpoint_take_their_defaults():
    """A checkpoint written before a setting existed is read with that setting's default: no spurious change."""
    saved = _saved(_plan())
    del saved["logging"]["rollouts_per_step"], saved["grpo"]["top_k"]
    assert not compare_configs(with_current_defaults(saved), _saved(_plan()))


def test_the_embedded_model_is_the_same_model_in_another_cache():
    assert same_model("/home/a/.cache/rlx/embedded-tiny-4559ce764ab7", "/tmp/c/embedded-tiny-4559ce764ab7")
    assert not same_model("/tmp/c/embedded-tiny-4559ce764ab7", "/tmp/c/embedded-tiny-000000000000")
    assert not same_model("/models/a", "/models/b")


# ------------------------------------------------------------------------------------------------ a run folder


class FakeTrainer:
    def save_checkpoint(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "weights").write_text("w")

    def load_checkpoint(self, path: str) -> None:
        assert (Path(path) / "weights").is_file()


def _run_folder(root: Path, plan, steps: tuple[int, ...]) -> CheckpointManager:
    root.mkdir(parents=True, exist_ok=True)
    mark(root, "run")
    manager = CheckpointManager(root / "checkpoints", keep_best=0)
    for step in steps:
        manager.save(step, FakeTrainer(), {"data": {}, "metrics": {}}, plan.to_yaml())
    return manager


def test_damaged_run_state_is_named_and_the_previous_checkpoint_used(tmp_path, caplog):
    plan = _plan(f"output_dir={tmp_path}", "checkpoint.period=1")
    manager = CheckpointManager(tmp_path / "checkpoints", keep_best=1)
    for step, accuracy in ((1, 0.5), (2, 0.25)):  # step 1 is kept as the best, step 2 as the latest
        manager.save(step, FakeTrainer(), {"data": {}, "metrics": {"val/accuracy": accuracy}}, plan.to_yaml())
    state = tmp_path / "checkpoints" / "step_00000002" / "run_state.json"
    state.write_text(state.read_text()[:100])  # truncated, as a full disk or a cut copy leaves it
    with caplog.at_level(logging.WARNING, logger="rlx.checkpoint"):
        latest = CheckpointManager(tmp_path / "checkpoints").latest()
    assert latest is not None and latest.step == 1
    assert f"skipping damaged checkpoint step_00000002: {state} is not valid JSON" in caplog.text
    assert "an older complete checkpoint is used" in caplog.text
    assert RunDir.prepare(plan.config).resume_point().step == 1


def test_only_damaged_checkpoints_is_an_error_naming_the_file(tmp_path):
    plan = _plan(f"output_dir={tmp_path}")
    _run_folder(tmp_path, plan, (3,))
    state = tmp_path / "checkpoints" / "step_00000003" / "run_state.json"
    state.write_text("{\"step\": 3, \"rng\": {\"py")
    with pytest.raises(ConfigError) as info:
        RunDir.prepare(plan.config).resume_point()
    message = str(info.value)
    assert message.startswith(f"cannot resume the run in '{tmp_path}': its checkpoints are damaged ({state} is not "
                              "valid JSON (")
    assert message.endswith("Start over with --fresh (the damaged checkpoints are set aside, not deleted), or choose "
                            "a new output_dir")
    plan.config.checkpoint.resume = False  # --fresh: no error, and the damaged folder is set aside
    assert RunDir.prepare(plan.config).resume_point() is None


def test_check_resume_refuses_with_a_diff_before_any_model_is_built(tmp_path):
    plan = _plan(f"output_dir={tmp_path}")
    _run_folder(tmp_path, plan, (2,))
    new = _plan(f"output_dir={tmp_path}", "grpo.num_generations=4", "grpo.mini_batch_size=64", "steps=250")
    console = Console(record=True, width=200)
    with pytest.raises(ConfigError) as info:
        RunDir.prepare(new.config).check_resume(new, console, model_resolved=False)
    ckpt = tmp_path / "checkpoints" / "step_00000002"
    assert str(info.value) == "\n".join([
        f"cannot resume the run in '{tmp_path}' from its checkpoint at step 2: these settings differ from the ones it "
        "was trained with, and they change the data, the model or what a step means:",
        "    grpo.mini_batch_size: 128 -> 64",
        "    grpo.num_generations: 8 -> 4",
        "  (these changed too, and could be resumed with:)",
        "    steps:                200 -> 250",
        f"To continue that run, use the settings it was trained with (they are in {ckpt / 'config.yaml'}). To start "
        "over in this folder, add --fresh (or checkpoint.resume=false): the earlier checkpoints and metrics are set "
        "aside, not deleted. To keep both runs, choose a new output_dir.",
    ])
    harmless = _plan(f"output_dir={tmp_path}", "steps=250", "logging.progress=false")
    RunDir.prepare(harmless.config).check_resume(harmless, console, model_resolved=False)
    assert ("resuming with changed settings (they do not change what a step means): logging.progress true -> false, "
            "steps 200 -> 250") in console.export_text()


def test_cli_refuses_to_resume_with_another_environment(tmp_path):
    """The reported bug: a resumed run with a different environment died in a tensor size mismatch."""
    plan = _plan(f"output_dir={tmp_path}")
    _run_folder(tmp_path, plan, (2,))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "rlx.cli", "run", f"output_dir={tmp_path}", "env.train=toy",
                           "env.toy.num_operands=3"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "from its checkpoint at step 2: these settings differ" in err and "env.toy.num_operands: 2 -> 3" in err
    assert "add --fresh" in err and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing built
    assert json.loads((tmp_path / "checkpoints" / "step_00000002" / "run_state.json").read_text())["step"] == 2
