"""Per-step metrics: JSON lines and TensorBoard events in the run's folder (W&B when configured), a progress line
on the terminal with the headline numbers, and a few of each step's rollouts as text (`rollouts.jsonl`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from rlx.rollout import Sample


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | Path,
        *,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        progress: bool = True,
        run_name: str = "rlx",
        config: dict[str, Any] | None = None,
        console: Console | None = None,
    ) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.dir / "metrics.jsonl"
        self._jsonl = self.jsonl_path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        self._wandb = None
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config or {}, dir=str(self.dir))
        self.console = console or Console()
        self._progress = None
        if progress:
            self._progress = Progress(
                TextColumn("[bold]GRPO[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[headline]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task("grpo", total=total_steps, completed=start_step, headline="")
            self._progress.start()
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        record = {"step": step, "wall_time": time.time() - self._t0, **clean}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        if self._progress is not None:
            parts = []
            if "reward/mean" in clean:
                parts.append(f"reward {clean['reward/mean']:.3f}")
            if "val/accuracy" in clean:
                parts.append(f"val {clean['val/accuracy']:.3f}")
            if "time/step" in clean:
                parts.append(f"{clean['time/step']:.1f}s/step")
            if parts:
                self._progress.update(self._task, headline=" | ".join(parts))
            if "time/step" in clean:
                self._progress.update(self._task, completed=step)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def print(self, message: str) -> None:
        self.console.print(message)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class RolloutLog:
    """`rollouts.jsonl`: the rollouts of the first `prompts_per_step` prompts of each step, one JSON line per
    completion, so a person can read what the model writes and how it was scored (0 = off: nothing is written).

    Each line: step, prompt_id, group (the prompt's index in the step), prompt (as the model saw it, chat template
    included), completion, reward, status, correct, length (completion tokens), finish_reason."""

    def __init__(self, path: str | Path, prompts_per_step: int, decode_prompt: Callable[[Sequence[int]], str]) -> None:
        self.path = Path(path)
        self.prompts_per_step = prompts_per_step
        self.decode_prompt = decode_prompt

    def write(self, step: int, groups: Sequence[Sequence[Sample]]) -> None:
        if self.prompts_per_step <= 0 or not groups:
            return
        lines = []
        for index, group in enumerate(groups[: self.prompts_per_step]):
            prompt = self.decode_prompt(group[0].prompt_ids) if group else ""
            for s in group:
                lines.append(json.dumps({
                    "step": step, "prompt_id": s.problem.id, "group": index, "prompt": prompt, "completion": s.text,
                    "reward": s.score.reward, "status": s.score.status, "correct": s.score.solved,
                    "length": s.num_model_tokens, "finish_reason": s.finish_reason,
                }))
        with self.path.open("a") as f:  # one write per step: a kill leaves at most one partial last line
            f.write("".join(line + "\n" for line in lines))


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a JSON-lines file; a line that does not parse (a run killed mid-write) is skipped."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def truncate_steps(path: str | Path, last_step: int) -> None:
    """Drop records after `last_step` (a resumed run logs those steps again) and any partial line, atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [record for record in _records(path) if record["step"] <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a metrics.jsonl (a partial last line, left by a killed run, is skipped)."""
    return _records(Path(path))


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to `timings[key]`."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t
