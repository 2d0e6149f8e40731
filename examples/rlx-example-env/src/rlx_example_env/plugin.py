"""The `echo` environment: the prompt names a word, the reward is 1 when the completion is exactly that word.

Small on purpose: it shows the whole plugin contract (hook, Config, Environment) in one module.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

import rlx
from rlx.interfaces import Problem, Score

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "glass", "honey", "ocean", "maple", "robot"]


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_train: int = Field(512, gt=0, description="training problems")
    num_validation: int = Field(32, ge=0, description="validation problems")


class EchoEnvironment:
    def __init__(self, config: EchoConfig, *, seed: int) -> None:
        self.config = config
        self._splits = {
            "train": self._make(config.num_train, seed),
            "validation": self._make(config.num_validation, seed + 1),
        }

    @staticmethod
    def _make(n: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        out = []
        for i in range(n):
            word = rng.choice(WORDS)
            out.append(Problem(id=f"echo-{seed}-{i}", messages=({"role": "user", "content": f"Say {word}."},),
                               answer=word, metadata={"solution": word}))
        return out

    def problems(self, split: str) -> Sequence[Problem]:
        return self._splits[split]

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        return [
            Score(1.0, "correct") if c.strip() == p.answer else Score(0.0, "wrong" if c.strip() else "no_answer")
            for p, c in zip(problems, completions, strict=True)
        ]

    def close(self) -> None:
        pass


@rlx.hookimpl
def register_environments(registry) -> None:  # noqa: ANN001 - rlx.registry.ComponentRegistry
    registry.add("echo", config=EchoConfig, factory="rlx_example_env.plugin:EchoEnvironment",
                 description="repeat a word back (example third-party plugin)")
