"""A run's folder (`output_dir`): the resolved config, checkpoints (resume or a fresh start that sets earlier
outputs aside), metrics, and the final Hugging Face exports. Everything `rlx run` writes goes through here.

    <output_dir>/config.yaml          the resolved run config (model path resolved)
    <output_dir>/metrics.jsonl        one JSON record per step (and TensorBoard events in tensorboard/)
    <output_dir>/checkpoints/step_N/  trainer state, run state (step, data cursor, RNG), config
    <output_dir>/hf, best-hf          the final policy and the best checkpoint's, as Hugging Face folders
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rlx.checkpoint import CheckpointManager
from rlx.config import RunConfig
from rlx.errors import ConfigError
from rlx.interfaces import Generator, Trainer
from rlx.metrics import MetricsLogger, truncate_metrics


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
        path = Path(config.output_dir).expanduser()
        for parent in (path, *path.parents):
            if parent.exists() and not parent.is_dir():
                raise ConfigError(
                    f"output_dir '{config.output_dir}': '{parent}' exists and is a file, not a folder. Choose another "
                    "output_dir (e.g. output_dir=runs/my-run)"
                )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, config)

    def write_config(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml
        (self.path / "config.yaml").write_text(config_yaml)

    def start(self, trainer: Trainer, generator: Generator, console: Console) -> dict[str, Any] | None:
        """Resume from the latest checkpoint (returns its run state: step, data cursor...) or start fresh, setting
        earlier checkpoints and metrics aside so two runs never mix. Metrics past the resumed step are dropped (a
        run killed after logging a step but before checkpointing it logs that step again)."""
        latest = self.checkpoints.latest() if self.config.checkpoint.resume else None
        if latest is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            if self.checkpoints.list():
                aside = self.path / f"checkpoints.before-{stamp}"
                (self.path / "checkpoints").rename(aside)
                console.print(f"[yellow]starting fresh: the earlier checkpoints were moved to {aside}[/yellow]")
            if (self.path / "metrics.jsonl").is_file():
                (self.path / "metrics.jsonl").rename(self.path / f"metrics.before-{stamp}.jsonl")
            return None
        state = self.checkpoints.load(latest, trainer)
        generator.update_weights(trainer.named_weights())
        truncate_metrics(self.path / "metrics.jsonl", state["step"])
        console.print(f"resumed from {latest.path} (step {state['step']})")
        if state["step"] >= self.config.steps:
            console.print(f"[yellow]the checkpoint is at step {state['step']} >= steps={self.config.steps}: nothing "
                          "to train. Raise `steps` to train further, or use --fresh to start over.[/yellow]")
        return state

    def logger(self, start_step: int, console: Console) -> MetricsLogger:
        c = self.config
        return MetricsLogger(self.path, total_steps=c.steps, start_step=start_step, tensorboard=c.logging.tensorboard,
                             wandb_project=c.logging.wandb_project, progress=c.logging.progress, run_name=c.name,
                             config=c.model_dump(mode="json"), console=console)

    def save(self, step: int, trainer: Trainer, run_state: dict[str, Any]) -> None:
        self.checkpoints.save(step, trainer, run_state, self.config_yaml)

    def export(self, trainer: Trainer, step: int) -> dict[str, str]:
        """`hf`: the final policy. `best-hf`: the best checkpoint by the chosen metric (what the next DeepScaleR
        stage starts from); a link to `hf` when the final policy is the best."""
        final_dir, best_dir = self.path / "hf", self.path / "best-hf"
        trainer.export_hf(str(final_dir))
        best = self.checkpoints.best()
        if best_dir.is_symlink() or best_dir.is_file():
            best_dir.unlink()
        elif best_dir.exists():
            shutil.rmtree(best_dir)
        if best is None or best.step == step:
            best_dir.symlink_to(final_dir.name)
        else:
            self.checkpoints.load(best, trainer)
            trainer.export_hf(str(best_dir))
        return {"model": str(final_dir), "best_model": str(best_dir)}
