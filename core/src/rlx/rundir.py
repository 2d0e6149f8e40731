"""A run's folder (`output_dir`): the resolved config, checkpoints (resume, checked against the saved config, or a
fresh start that sets earlier outputs aside), metrics, sample rollouts, and the final Hugging Face exports.
Everything `rlx run` writes goes through here, and nothing it did not write is ever replaced (`rlx.outputs`).

    <output_dir>/.rlx-output          marks the folder as an rlx run folder
    <output_dir>/config.yaml          the resolved run config (model path resolved)
    <output_dir>/metrics.jsonl        one JSON record per step (and TensorBoard events in tensorboard/)
    <output_dir>/rollouts.jsonl       a few of each step's completions as text, with their scores
    <output_dir>/metrics.png          the headline curves (`rlx plot`), written at the end when matplotlib is there
    <output_dir>/checkpoints/step_N/  trainer state, run state (step, data cursor, RNG), config
    <output_dir>/hf, best-hf          the final policy and the best checkpoint's, as Hugging Face folders
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from rlx.checkpoint import COMPLETE_MARKER, CheckpointInfo, CheckpointManager
from rlx.config import RunConfig
from rlx.errors import ConfigError
from rlx.generation import push_weights_within
from rlx.interfaces import Generator, Trainer
from rlx.metrics import MetricsLogger, RolloutLog, truncate_steps
from rlx.outputs import check_replaceable, link_folder, mark, writing_folder, written_by_rlx

if TYPE_CHECKING:
    from rlx.plan import Plan

METRICS, ROLLOUTS = "metrics.jsonl", "rollouts.jsonl"
_EXPORT_REMEDY = "move it out of the run folder (or choose another output_dir)"


def looks_like_run_folder(path: Path) -> bool:
    """Marked by rlx, or written by an rlx from before the marker (a complete checkpoint, or config + metrics)."""
    return (
        written_by_rlx(path)
        or any((path / "checkpoints").glob(f"step_*/{COMPLETE_MARKER}"))
        or ((path / "config.yaml").is_file() and (path / METRICS).is_file())
    )


def _adopt_earlier_exports(path: Path) -> None:
    """A run folder written before rlx marked its outputs: its `hf`/`best-hf` folders are that rlx's exports."""
    if not looks_like_run_folder(path):
        return
    for name in ("hf", "best-hf"):
        folder = path / name
        if folder.is_dir() and not folder.is_symlink() and (folder / "config.json").is_file() and not written_by_rlx(folder):
            mark(folder, "hf-export")


class RunDir:
    """The folder of one run; `prepare` checks it can be used before anything heavy is loaded."""

    def __init__(self, path: Path, config: RunConfig) -> None:
        self.path = path
        self.config = config
        c = config.checkpoint
        self.checkpoints = CheckpointManager(path / "checkpoints", keep_best=c.keep_best, metric=c.metric, mode=c.mode)
        self.config_yaml = ""

    @classmethod
    def prepare(cls, config: RunConfig) -> RunDir:
        """The run folder, created and marked; a ConfigError when `output_dir` is (or is inside) a file, or is a
        folder holding things rlx did not write (they could be overwritten), or when an export destination is."""
        path = Path(config.output_dir).expanduser()
        for parent in (path, *path.parents):
            if parent.exists() and not parent.is_dir():
                raise ConfigError(
                    f"output_dir '{config.output_dir}': '{parent}' exists and is a file, not a folder. Choose another "
                    "output_dir (e.g. output_dir=runs/my-run)"
                )
        if path.is_dir() and any(path.iterdir()) and not looks_like_run_folder(path):
            found = sorted(p.name for p in path.iterdir())
            raise ConfigError(
                f"output_dir '{config.output_dir}' is a folder that rlx did not write (it holds "
                f"{', '.join(found[:6])}{', ...' if len(found) > 6 else ''}): a run writes config.yaml, metrics and "
                "checkpoints there and could overwrite them. Choose another output_dir (e.g. output_dir=runs/my-run)"
            )
        rundir = cls(path, config)
        if path.is_dir() and not written_by_rlx(path):
            _adopt_earlier_exports(path)
        if config.checkpoint.export_hf:  # fail now, not after training, if an export would replace a user's folder
            for name in ("hf", "best-hf"):
                check_replaceable(path / name, kind="hf-export", what="export folder", remedy=_EXPORT_REMEDY)
        path.mkdir(parents=True, exist_ok=True)
        if not written_by_rlx(path):
            mark(path, "run")
        return rundir

    # ------------------------------------------------------------------------------------------------ resume

    def resume_point(self) -> CheckpointInfo | None:
        """The checkpoint this run continues from (None: a fresh start). Damaged checkpoints are skipped (with a
        warning) in favour of an older complete one; when every checkpoint is damaged that is an error."""
        if not self.config.checkpoint.resume:
            return None
        latest = self.checkpoints.latest()
        if latest is None and self.checkpoints.damaged:
            reasons = "; ".join(self.checkpoints.damaged.values())
            raise ConfigError(
                f"cannot resume the run in '{self.path}': its checkpoints are damaged ({reasons}). Start over with "
                "--fresh (the damaged checkpoints are set aside, not deleted), or choose a new output_dir"
            )
        return latest

    def check_resume(self, plan: Plan, console: Console, *, model_resolved: bool) -> None:
        """Refuse to resume with settings that change what the checkpoint's steps meant (a ConfigError with the
        diff and how to go on); print the harmless changes. Called before the model is resolved (everything but
        the model path, so a changed environment is refused before any model is built) and after (the path)."""
        from rlx.resume import (
            MODEL_PATH,
            compare_configs,
            declared_by_components,
            harmless_message,
            load_saved_config,
            refusal_message,
            with_current_defaults,
        )

        latest = self.resume_point()
        saved = load_saved_config(latest.path) if latest else None
        if latest is None or saved is None:
            return
        import yaml

        new = yaml.safe_load(plan.to_yaml())
        if model_resolved:
            saved_model = saved.get("model") if isinstance(saved.get("model"), dict) else {}
            changes = compare_configs({"model": {"path": saved_model.get("path")}},
                                      {"model": {"path": new["model"]["path"]}})
        else:
            changes = compare_configs(with_current_defaults(saved), new, skip=(MODEL_PATH, "output_dir"),
                                      declared=declared_by_components(plan))
        if changes.incompatible:
            raise ConfigError(refusal_message(str(self.path), latest.path, latest.step, changes))
        if changes.harmless:
            console.print(f"[yellow]{escape(harmless_message(changes))}[/yellow]")

    def write_config(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml
        tmp = self.path / "config.yaml.tmp"
        tmp.write_text(config_yaml)
        tmp.replace(self.path / "config.yaml")

    def start(self, trainer: Trainer, generator: Generator, console: Console) -> dict[str, Any] | None:
        """Resume from the latest checkpoint (returns its run state: step, data cursor...) or start fresh, setting
        earlier checkpoints, metrics and rollouts aside so two runs never mix. Records past the resumed step are
        dropped (a run killed after logging a step but before checkpointing it logs that step again)."""
        latest = self.resume_point()
        if latest is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            if self.checkpoints.has_any():
                aside = self.path / f"checkpoints.before-{stamp}"
                (self.path / "checkpoints").rename(aside)
                console.print(f"[yellow]starting fresh: the earlier checkpoints were moved to {aside}[/yellow]")
            for name in (METRICS, ROLLOUTS):
                if (self.path / name).is_file():
                    stem, suffix = name.split(".")
                    (self.path / name).rename(self.path / f"{stem}.before-{stamp}.{suffix}")
            return None
        state = self.checkpoints.load(latest, trainer)
        push_weights_within(generator, trainer.named_weights(), state["step"], timeout_s=self.config.cluster.timeout_s)
        for name in (METRICS, ROLLOUTS):
            truncate_steps(self.path / name, state["step"])
        console.print(f"resumed from {latest.path} (step {state['step']})")
        if state["step"] >= self.config.steps:
            console.print(f"[yellow]the checkpoint is at step {state['step']} >= steps={self.config.steps}: nothing "
                          "to train. Raise `steps` to train further, or use --fresh to start over.[/yellow]")
        return state

    # ------------------------------------------------------------------------------------------------ writing

    def logger(self, start_step: int, console: Console) -> MetricsLogger:
        c = self.config
        return MetricsLogger(self.path, total_steps=c.steps, start_step=start_step, tensorboard=c.logging.tensorboard,
                             wandb_project=c.logging.wandb_project, progress=c.logging.progress, run_name=c.name,
                             config=c.model_dump(mode="json"), console=console)

    def rollout_log(self, decode_prompt: Callable[[Sequence[int]], str]) -> RolloutLog:
        return RolloutLog(self.path / ROLLOUTS, self.config.logging.rollouts_per_step, decode_prompt)

    def save(self, step: int, trainer: Trainer, run_state: dict[str, Any]) -> None:
        self.checkpoints.save(step, trainer, run_state, self.config_yaml)

    def export(self, trainer: Trainer, step: int) -> dict[str, str]:
        """`hf`: the final policy. `best-hf`: the best checkpoint by the chosen metric (what the next DeepScaleR
        stage starts from); a link to `hf` when the final policy is the best. Each is written beside its place and
        swapped in whole, so a run that reads the previous export (the next stage) never sees half of one."""
        final_dir, best_dir = self.path / "hf", self.path / "best-hf"
        with writing_folder(final_dir, kind="hf-export", what="export folder", remedy=_EXPORT_REMEDY) as staging:
            trainer.export_hf(str(staging))
        best = self.checkpoints.best()
        if best is None or best.step == step:
            link_folder(final_dir.name, best_dir, kind="hf-export", what="export folder", remedy=_EXPORT_REMEDY)
        else:
            self.checkpoints.load(best, trainer)
            with writing_folder(best_dir, kind="hf-export", what="export folder", remedy=_EXPORT_REMEDY) as staging:
                trainer.export_hf(str(staging))
        return {"model": str(final_dir), "best_model": str(best_dir)}
