"""The rollout half of a GRPO step: draw prompts, generate G completions each, score them, shape the rewards (DAPO's
soft overlong penalty) and, with DAPO dynamic sampling, drop groups whose rewards all agree and draw more prompts
until the step is full. `rlx.loop` trains on the `StepRollouts` it returns; an asynchronous producer (generating
ahead) can take this one's place.

Shapes: P = groups trained on, G = completions per prompt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlx.config import GRPOConfig
from rlx.data import DataCursor
from rlx.generation import sleep_before_weight_push
from rlx.grpo.rewards import informative_group, overlong_penalty
from rlx.interfaces import Problem
from rlx.metrics import timed
from rlx.rollout import RolloutCollector, Sample

log = logging.getLogger("rlx.producer")

# refill rounds sample with their own seeds (round 0 keeps the step's seed)
_ROUND_SEED_STRIDE = 1_000_003


@dataclass
class StepRollouts:
    """One step's rollouts.

    groups: the groups to train on (at most prompts_per_step), in draw order; rewards: (P, G) float32 their shaped
    rewards (what the advantages see); drawn: every group generated this step (reward metrics describe these, so
    they stay an unbiased picture of the policy); metrics: dynamic_sampling/*, overlong/*, time/*.
    data_state: the data cursor just after the batch's draws (what a checkpoint taken after training on it holds,
    whatever an asynchronous producer has drawn since). policy_version (set by the asynchronous producer): the
    version the generator served when the batch started (samples that carry no version of their own have it).
    """

    groups: list[list[Sample]]
    rewards: torch.Tensor
    drawn: list[list[Sample]]
    metrics: dict[str, float] = field(default_factory=dict)
    policy_version: int | None = None
    data_state: dict[str, int] | None = None


def _keep_every_group(rewards: Sequence[float]) -> bool:
    return True


class RolloutProducer:
    """Produces each step's rollouts from the training problems, advancing `cursor` by every prompt it draws (the
    cursor is checkpointed after the step, so a resumed run draws the same prompts: refills included).

    keep_awake: never put the generator to sleep (the asynchronous producer keeps it resident beside the trainer).
    The synchronous loop pushes every weight after each `produce` (whether or not a group was kept), so the sleep
    here is `sleep_before_weight_push`: a generator that can discards its weights instead of keeping them.
    """

    def __init__(self, collector: RolloutCollector, cursor: DataCursor, problems: Sequence[Problem],
                 grpo: GRPOConfig) -> None:
        self.collector = collector
        self.cursor = cursor
        self.problems = problems
        self.grpo = grpo
        self._warned_short = False
        self.keep_awake = False

    def produce(self, step_seed: int) -> StepRollouts:
        g = self.grpo
        ds, overlong = g.dynamic_sampling, g.overlong
        rounds = ds.max_rounds if ds.enabled else 1
        keep = informative_group if ds.enabled else _keep_every_group
        target = g.prompts_per_step
        timings: dict[str, float] = {}
        kept: list[tuple[list[Sample], list[float]]] = []
        drawn: list[list[Sample]] = []
        penalties: list[float] = []
        generator = self.collector.generator
        with timed(timings, "time/wake_up"):
            generator.wake_up()
        done_rounds, last_round = 0, False
        for round_index in range(rounds):
            if len(kept) >= target:
                break
            count = target if round_index == 0 else self._refill_size(target - len(kept), len(kept), len(drawn))
            problems = [self.problems[i] for i in self.cursor.next_indices(count)]
            params = self.collector.sampling(
                [self.collector.encoder.encode(p) for p in problems], n=g.num_generations, temperature=g.temperature,
                top_p=g.top_p, top_k=g.top_k, max_new_tokens=g.max_new_tokens,
                seed=step_seed + _ROUND_SEED_STRIDE * round_index,
            )
            with timed(timings, "time/generate"):
                completions = self.collector.generate(problems, params)
            last_round = round_index == rounds - 1
            if last_round and not self.keep_awake:  # nothing more to generate: give the accelerator back first
                with timed(timings, "time/sleep"):
                    sleep_before_weight_push(generator)
            with timed(timings, "time/score"):
                groups = self.collector.score(problems, completions)
            env_metrics = environment_metrics(self.collector.env)
            for key, value in env_metrics.items():  # counts and seconds add up over refill rounds; shares do not
                share = key.endswith(("_frac", "_fraction"))
                timings[key] = value if share else timings.get(key, 0.0) + value
            for group in groups:
                shaping = [overlong_penalty(s.num_model_tokens, params.max_new_tokens, overlong.soft_penalty_tokens,
                                            overlong.penalty) for s in group]
                penalties.extend(shaping)
                rewards = [s.score.reward + p for s, p in zip(group, shaping, strict=True)]
                drawn.append(group)
                if keep(rewards):
                    kept.append((group, rewards))
            done_rounds += 1
        if not last_round and not self.keep_awake:
            with timed(timings, "time/sleep"):
                sleep_before_weight_push(generator)

        trained = kept[:target]
        if len(trained) < target and not self._warned_short:  # once: the metric dynamic_sampling/short_groups says the rest
            self._warned_short = True
            log.warning("dynamic sampling: %d of %d groups had differing rewards after %d rounds; training on those "
                        "(dynamic_sampling/short_groups counts this per step; raise grpo.dynamic_sampling.max_rounds)",
                        len(trained), target, done_rounds)
        metrics = {
            "dynamic_sampling/rounds": float(done_rounds),
            "dynamic_sampling/drawn_groups": float(len(drawn)),
            "dynamic_sampling/kept_groups": float(len(trained)),
            "dynamic_sampling/dropped_groups": float(len(drawn) - len(kept)),
            "dynamic_sampling/surplus_groups": float(len(kept) - len(trained)),
            "dynamic_sampling/short_groups": float(target - len(trained)),
            "overlong/penalty_mean": sum(penalties) / len(penalties) if penalties else 0.0,
            **timings,
        }
        rewards = torch.tensor([r for _, r in trained], dtype=torch.float32).view(len(trained), g.num_generations)
        return StepRollouts([grp for grp, _ in trained], rewards, drawn, metrics, data_state=self.cursor.state())

    def _refill_size(self, missing: int, kept: int, drawn: int) -> int:
        """Prompts for the next round: the missing groups over the share kept so far, at most prompts_per_step."""
        if kept == 0:
            return self.grpo.prompts_per_step
        return min(self.grpo.prompts_per_step, math.ceil(missing * drawn / kept))


def environment_metrics(env: object) -> dict[str, float]:
    """Per-batch statistics an environment offers (optional: `last_grading_stats.metrics()`, e.g. rlx-math's
    grading seconds and how many answers took the fast path or timed out)."""
    stats = getattr(env, "last_grading_stats", None)
    metrics = getattr(stats, "metrics", None)
    if not callable(metrics):
        return {}
    return {str(k): float(v) for k, v in metrics().items()}
