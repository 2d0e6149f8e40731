"""Evaluation: k samples per problem, scored by the environment; accuracy (= avg@k, the mean of pass@1) and the
unbiased pass@k, counting what the environment says is solved (`Score.solved`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlx.config import RolloutConfig
from rlx.data import PromptEncoder
from rlx.grpo.metrics import pass_at_k
from rlx.interfaces import Environment, Generator, Problem, SamplingParams
from rlx.rollout import make_collector


@dataclass
class EvalResult:
    summary: dict[str, float]
    per_problem: list[dict[str, Any]]


def evaluate(
    generator: Generator, env: Environment, encoder: PromptEncoder, problems: Sequence[Problem], params: SamplingParams,
    *, rollout: RolloutConfig | None = None,
) -> EvalResult:
    """Generate k = params.n samples per problem and score them: accuracy (= avg@k, mean of pass@1), pass@k.
    Multi-turn environments run k episodes per problem (within the `rollout` limits)."""
    collector = make_collector(generator, env, encoder, rollout)
    generator.wake_up()
    groups = collector.generate(problems, params)
    generator.sleep()
    samples = collector.score(problems, groups)
    k = params.n
    per_problem = []
    for problem, group in zip(problems, samples, strict=True):
        per_problem.append(
            {
                "id": problem.id,
                "answer": problem.answer,
                "num_samples": k,
                "num_correct": sum(1 for s in group if s.score.solved),
                "rewards": [s.score.reward for s in group],
                "statuses": [s.score.status for s in group],
                "completions": [s.text for s in group],
            }
        )
    acc = sum(p["num_correct"] for p in per_problem) / (k * len(problems))
    rewards = [r for p in per_problem for r in p["rewards"]]
    summary = {"accuracy": acc, f"avg@{k}": acc, "reward_mean": sum(rewards) / len(rewards),
               "num_problems": float(len(problems))}
    for kk in sorted({1, k} | {x for x in (2, 4, 8, 16) if x < k}):
        summary[f"pass@{kk}"] = sum(pass_at_k(k, p["num_correct"], kk) for p in per_problem) / len(problems)
    summary.update(status_fractions(s for p in per_problem for s in p["statuses"]))
    return EvalResult(summary, per_problem)


def status_fractions(statuses: Iterable[str]) -> dict[str, float]:
    """`score/<status>_frac` for every status seen (the common ones always, so curves do not start mid-run)."""
    counts = Counter({"correct": 0, "wrong": 0, "no_answer": 0, "timeout": 0, "error": 0})
    counts.update(statuses)
    total = max(sum(counts.values()), 1)
    return {f"score/{status}_frac": n / total for status, n in sorted(counts.items())}
