"""Run checkpoints: `<output_dir>/checkpoints/step_<N>/` holding the trainer's sharded state (DCP), the run
state (step, data position, RNG states, metrics) and the resolved config.

A checkpoint is written under a temporary name and renamed when complete, so a kill at any moment leaves
the previous checkpoints intact; an incomplete folder is never loaded and is cleaned up on the next save.
The latest checkpoint is always kept, plus the best `keep_best` by a chosen metric.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlx.errors import ConfigError
from rlx.interfaces import Trainer
from rlx.outputs import fsync_dir

log = logging.getLogger("rlx.checkpoint")

COMPLETE_MARKER = "COMPLETE"
RUN_STATE = "run_state.json"


class DamagedCheckpoint(ConfigError):
    """A complete checkpoint whose run state cannot be read; the message names the file and what is wrong."""


def read_run_state(folder: Path) -> dict[str, Any]:
    """`folder/run_state.json` as a dict with an integer `step`, or DamagedCheckpoint naming the file."""
    path = folder / RUN_STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedCheckpoint(f"{path} is not valid JSON ({exc}): the file is truncated or damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpoint(f"{path} has no integer 'step': it was not written by rlx or is damaged")
    return state


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    metrics: dict[str, float]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    try:
        import numpy as np

        s = np.random.get_state()
        state["numpy"] = [s[0], s[1].tolist(), s[2], s[3], s[4]]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4]))


class CheckpointManager:
    def __init__(self, root: str | Path, *, keep_best: int = 1, metric: str = "val/accuracy", mode: str = "max") -> None:
        self.root = Path(root)
        self.keep_best = keep_best
        self.metric = metric
        self.mode = mode
        self.damaged: dict[Path, str] = {}  # complete checkpoints whose run state cannot be read -> why

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints with a readable run state, oldest first (damaged ones are in `damaged`)."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            if child.name.startswith("step_") and (child / COMPLETE_MARKER).is_file():
                try:
                    state = read_run_state(child)
                except DamagedCheckpoint as exc:
                    if child not in self.damaged:
                        log.warning("skipping damaged checkpoint %s: %s (an older complete checkpoint is used if there is one)",
                                    child.name, exc)
                    self.damaged[child] = str(exc)
                    continue
                self.damaged.pop(child, None)
                out.append(CheckpointInfo(state["step"], child, state.get("metrics", {})))
        return sorted(out, key=lambda c: c.step)

    def has_any(self) -> bool:
        """Whether any step folder is here (complete, damaged or half-written)."""
        return self.root.is_dir() and any(c.name.startswith("step_") for c in self.root.iterdir())

    def latest(self) -> CheckpointInfo | None:
        found = self.list()
        return found[-1] if found else None

    def best(self) -> CheckpointInfo | None:
        scored = [c for c in self.list() if self.metric in c.metrics]
        if not scored:
            return None
        key = (lambda c: c.metrics[self.metric]) if self.mode == "max" else (lambda c: -c.metrics[self.metric])
        return max(scored, key=key)

    def save(self, step: int, trainer: Trainer, run_state: dict[str, Any], config_yaml: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.tmp"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f"step_{step:08d}.tmp"
        tmp.mkdir()
        trainer.save_checkpoint(str(tmp / "trainer"))
        state = {"step": step, "rng": rng_state(), **run_state}
        (tmp / RUN_STATE).write_text(json.dumps(state))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. at the end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        self._prune()
        return final

    def load(self, info: CheckpointInfo, trainer: Trainer) -> dict[str, Any]:
        trainer.load_checkpoint(str(info.path / "trainer"))
        state = read_run_state(info.path)
        set_rng_state(state["rng"])
        return state

    def _prune(self) -> None:
        found = self.list()
        if not found:
            return
        keep = {found[-1].path}
        scored = [c for c in found if self.metric in c.metrics]
        scored.sort(key=lambda c: c.metrics[self.metric], reverse=self.mode == "max")
        keep.update(c.path for c in scored[: self.keep_best])
        for c in found:
            if c.path not in keep:
                shutil.rmtree(c.path, ignore_errors=True)
