"""Environment scorers as Ray actors: `RayEnvironmentPool` is an Environment whose `score` runs on them (contiguous
blocks, results in order) while `problems` stays with the driver's own environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlx.cluster.ray.placement import Placement
from rlx.cluster.ray.pool import ActorPool, PoolBacked, StepClock, node_info
from rlx.interfaces import Environment, Problem, Score, Split
from rlx.plan import Choice
from rlx.registry import BuildContext


class EnvironmentActor:
    """One scorer: the environment component built on a Ray worker (only `score` is used remotely)."""

    def __init__(self, choice: Choice, ctx: BuildContext) -> None:
        self.env: Environment = choice.build(ctx)

    def node(self) -> dict[str, Any]:
        return node_info()

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        return self.env.score(problems, completions)

    def close(self) -> None:
        self.env.close()


class RayEnvironmentPool(PoolBacked):
    """An `Environment` scoring on `workers` Ray actors; `problems` comes from `local` (the driver built it, and
    owns closing it)."""

    close_grace_s = 10.0

    def __init__(
        self,
        local: Environment,
        choice: Choice,
        ctx: BuildContext,
        *,
        workers: int,
        placement: Placement,
        timeout_s: float,
        clock: StepClock | None = None,
    ) -> None:
        self.local = local
        self.pool = ActorPool(
            EnvironmentActor,
            [(choice, ctx)] * workers,
            [placement.environment_options()] * workers,
            labels=[f"environment worker {w}" for w in range(workers)],
            timeout_s=timeout_s,
            clock=clock or StepClock(),
        )

    def problems(self, split: Split) -> Sequence[Problem]:
        return self.local.problems(split)

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        if len(problems) != len(completions):
            raise ValueError(f"score: {len(problems)} problems but {len(completions)} completions")
        return self.pool.call_blocks(
            "score", len(problems), lambda _, rows: (list(problems[rows]), list(completions[rows]))
        )
