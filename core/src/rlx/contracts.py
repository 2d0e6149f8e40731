"""Contract checks at the core's boundary with plugins: what an environment returns is validated where it
enters the run, and a violation becomes one error naming the component, its plugin and what the contract asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rlx.errors import ComponentError, a_or_an
from rlx.interfaces import Environment, Observation, Problem, Score, Split


class CheckedEnvironment:
    """An `Environment` that checks what the wrapped one returns (and that it does not raise).

    `label` names the component in messages, e.g. "environment 'math' (from rlx-math)"."""

    def __init__(self, env: Environment, label: str) -> None:
        self.inner = env
        self.label = label

    def problems(self, split: Split) -> Sequence[Problem]:
        try:
            found = self.inner.problems(split)
        except Exception as exc:  # noqa: BLE001 - the plugin's failure, named
            raise ComponentError(f"{self.label}: problems({split!r}) raised {type(exc).__name__}: {exc}") from exc
        bad = next((i for i, p in enumerate(found) if not isinstance(p, Problem)), None)
        if bad is not None:
            raise ComponentError(
                f"{self.label}: problems({split!r})[{bad}] is {a_or_an(type(found[bad]).__name__)}, not an rlx.Problem"
            )
        if split == "train" and not found:
            raise ComponentError(
                f"{self.label} has no training problems: problems('train') returned an empty list "
                "(check the environment's dataset options, e.g. env.train)"
            )
        return found

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        try:
            scores = self.inner.score(problems, completions)
        except Exception as exc:  # noqa: BLE001
            raise ComponentError(
                f"{self.label}: score() raised {type(exc).__name__}: {exc}. The Environment contract: score() "
                "never raises on model output; a completion it cannot grade gets a Score with status 'error'"
            ) from exc
        return check_scores(scores, len(completions), self.label)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):  # noqa: ANN204 - optional capabilities (episodes, stats) pass through
        return getattr(self.inner, name)


def check_scores(scores: object, expected: int, label: str) -> list[Score]:
    """`scores` as a list of `expected` Scores with finite float rewards, or a ComponentError saying what is off."""
    if not isinstance(scores, list | tuple):
        raise ComponentError(f"{label}: score() returned {a_or_an(type(scores).__name__)}; it must return a list of rlx.Score")
    if len(scores) != expected:
        raise ComponentError(
            f"{label}: score() returned {len(scores)} scores for {expected} completions; it must return exactly one "
            "Score per completion, in order"
        )
    for i, s in enumerate(scores):
        if not isinstance(s, Score):
            raise ComponentError(f"{label}: score()[{i}] is {a_or_an(type(s).__name__)}, not an rlx.Score")
        if not _finite(s.reward):
            raise ComponentError(
                f"{label}: score()[{i}] has reward {s.reward!r} (status {s.status!r}); rewards must be finite numbers "
                "(a completion that cannot be graded gets a finite reward, e.g. 0.0, and status 'error')"
            )
    return list(scores)


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_step_result(result: object, label: str) -> Observation | Score:
    """What `Episode.step` returned, if the contract allows it (an Observation of chat messages, or a Score with a
    finite reward); otherwise a ComponentError saying what is off (the core ends that episode: 'env_error')."""
    if isinstance(result, Score):
        if not _finite(result.reward):
            raise ComponentError(f"{label}: Episode.step() returned a Score with reward {result.reward!r}; rewards "
                                 "must be finite numbers")
        return result
    if not isinstance(result, Observation):
        raise ComponentError(f"{label}: Episode.step() returned {a_or_an(type(result).__name__)}; it must return an "
                             "rlx.interfaces.Observation (the episode goes on) or an rlx.Score (it ends)")
    if not isinstance(result.messages, tuple | list) or not result.messages:
        raise ComponentError(f"{label}: Observation.messages must be a non-empty tuple of chat messages, got "
                             f"{result.messages!r:.80}")
    for i, m in enumerate(result.messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ComponentError(f"{label}: Observation.messages[{i}] is {m!r:.80}; a chat message is a dict with "
                                 "string 'role' and 'content'")
    if not _finite(result.reward):
        raise ComponentError(f"{label}: Observation.reward is {result.reward!r}; rewards must be finite numbers")
    return result
