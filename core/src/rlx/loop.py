"""The GRPO loop, top to bottom. It talks only to the three contracts (Generator, Trainer, Environment) and
the pure algorithm in `rlx.grpo`; it does not know which plugin, device or cluster it runs on.

One step:  draw prompts -> generate G completions each -> score -> group advantages -> pi_old (and reference)
log-probs from the trainer -> optimizer steps over mini-batches -> push weights to the generator -> metrics.
(Logging, validation periods and checkpoints are the caller's: `rlx.run`.)

Simplifications (stated, as nanochat does): one environment per run; prompts longer than the model's
`max_seq_len - 1` are dropped at load time (counted and reported); completions are cut at
`min(grpo.max_new_tokens, max_seq_len - longest prompt of the step)` tokens.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rlx.config import GRPOConfig, ValidationConfig
from rlx.data import DataCursor, PromptEncoder
from rlx.evaluation import evaluate, status_fractions
from rlx.grpo.advantages import group_advantages
from rlx.grpo.losses import LOSS_AGGREGATIONS, policy_loss
from rlx.grpo.metrics import logprob_mismatch, rollout_metrics
from rlx.interfaces import Environment, Generator, Problem, TokenBatch, TrainBatch, Trainer
from rlx.rollout import RolloutCollector, Sample, collate

log = logging.getLogger("rlx.loop")


def mini_batches(
    batch: TokenBatch,
    *,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    generator_logprobs: torch.Tensor,
    size: int,
    loss_agg: str,
    generator: torch.Generator,
) -> list[TrainBatch]:
    """Shuffle the step's sequences and cut them into mini-batches of `size`, each carrying its loss weights.

    Loss weights are computed per mini-batch over all of its sequences (the "global batch" of one optimizer
    step), so any later split into micro-batches or ranks gives the same update.
    """
    perm = torch.randperm(len(batch), generator=generator)
    out = []
    for start in range(0, len(batch), size):
        idx = perm[start : start + size]
        mask = batch.completion_mask[idx]
        out.append(
            TrainBatch(
                input_ids=batch.input_ids[idx],
                attention_mask=batch.attention_mask[idx],
                completion_mask=mask,
                old_logprobs=old_logprobs[idx],
                advantages=advantages[idx],
                loss_weights=LOSS_AGGREGATIONS[loss_agg](mask),
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[idx],
                generator_logprobs=generator_logprobs[idx],
            )
        )
    return out


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    samples: list[list[Sample]] = field(default_factory=list)  # the step's rollouts, one group per prompt


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t


@dataclass
class GRPOLoop:
    """Holds the components and runs GRPO steps (`run_step`) and validation (`validate`)."""

    generator: Generator
    trainer: Trainer
    env: Environment
    encoder: PromptEncoder
    grpo: GRPOConfig
    validation: ValidationConfig
    seed: int
    train_problems: Sequence[Problem]
    val_problems: Sequence[Problem] = ()
    pad_id: int | None = None  # default: the tokenizer's pad (else eos) id
    cursor: DataCursor = field(init=False)
    step: int = 0

    def __post_init__(self) -> None:
        if not self.train_problems:
            raise ValueError("the environment returned no training problems")
        if self.pad_id is None:
            self.pad_id = self.encoder.pad_id
        self.cursor = DataCursor(len(self.train_problems), self.seed)
        self.collector = RolloutCollector(self.generator, self.env, self.encoder)
        self.loss_fn: Callable = functools.partial(
            policy_loss,
            clip_low=self.grpo.clip_low,
            clip_high=self.grpo.clip_high,
            dual_clip=self.grpo.dual_clip,
            kl_coef=self.grpo.kl_coef,
        )

    def run_step(self) -> StepResult:
        """One GRPO step; returns its metrics (all floats) and rollouts."""
        g = self.grpo
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        step_seed = self.seed * 100_003 + self.step

        # 1. prompts, 2. G completions each (colocated engines take the accelerator back for the rollout)
        problems = [self.train_problems[i] for i in self.cursor.next_indices(g.prompts_per_step)]
        prompts = [self.encoder.encode(p) for p in problems]
        with _timed(timings, "time/wake_up"):
            self.generator.wake_up()
        params = self.collector.sampling(prompts, n=g.num_generations, temperature=g.temperature, top_p=g.top_p,
                                         top_k=g.top_k, max_new_tokens=g.max_new_tokens, seed=step_seed)
        with _timed(timings, "time/generate"):
            completions = self.collector.generate(problems, params)
        with _timed(timings, "time/sleep"):
            self.generator.sleep()

        # 3. score; 4. one advantage per sequence, from its group of G
        with _timed(timings, "time/score"):
            groups = self.collector.score(problems, completions)
        rewards = torch.tensor([[s.score.reward for s in group] for group in groups], dtype=torch.float32)  # (P, G)
        advantages = group_advantages(rewards, baseline=g.baseline, normalize_std=g.normalize_std)  # (P, G)

        # 5. pi_old (and reference) log-probs from the trainer
        samples = [s for group in groups for s in group]  # (P*G,), prompt-major
        batch, gen_logprobs = collate(samples, self.pad_id)
        with _timed(timings, "time/logprobs"):
            old_logprobs = self.trainer.logprobs(batch, temperature=g.temperature)
            ref_logprobs = (
                self.trainer.logprobs(batch, temperature=g.temperature, reference=True) if g.kl_coef > 0 else None
            )

        # 6. optimizer steps over mini-batches
        shuffle = torch.Generator().manual_seed(step_seed)
        train_metrics: list[dict[str, float]] = []
        with _timed(timings, "time/train"):
            for _ in range(g.epochs_per_step):
                for mb in mini_batches(
                    batch, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, advantages=advantages.flatten(),
                    generator_logprobs=gen_logprobs, size=g.mini_batch_size, loss_agg=g.loss_agg, generator=shuffle,
                ):
                    train_metrics.append(self.trainer.train_step(mb, self.loss_fn, temperature=g.temperature))

        # 7. push the new weights to the generator
        with _timed(timings, "time/weight_sync"):
            self.generator.update_weights(self.trainer.named_weights())

        self.step += 1
        metrics = rollout_metrics(
            rewards,
            advantages,
            torch.tensor([s.num_model_tokens for s in samples], dtype=torch.float32),
            truncated=torch.tensor([s.truncated for s in samples]),
        )
        metrics["reward/solved_frac"] = sum(s.score.solved for s in samples) / len(samples)
        metrics.update(status_fractions(s.score.status for s in samples))
        metrics["logprob_mismatch"] = logprob_mismatch(gen_logprobs, old_logprobs, batch.completion_mask)
        metrics.update(_mean_dicts(train_metrics, prefix="train/"))
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["throughput/completion_tokens_per_s"] = int(batch.completion_mask.sum()) / metrics["time/step"]
        return StepResult(self.step, metrics, groups)

    def validate(self) -> dict[str, float]:
        """avg@k (mean of pass@1 over k samples per problem) and unbiased pass@k on the validation problems."""
        v = self.validation
        problems = list(self.val_problems[: v.max_problems] if v.max_problems else self.val_problems)
        if not problems:
            return {}
        t = time.perf_counter()
        params = self.collector.sampling(
            [self.encoder.encode(p) for p in problems], n=v.samples_per_problem, temperature=v.temperature,
            top_p=v.top_p, top_k=-1, max_new_tokens=v.max_new_tokens or self.grpo.max_new_tokens,
            seed=self.seed + 7919,
        )
        results = evaluate(self.generator, self.env, self.encoder, problems, params)
        summary = {f"val/{k}": float(x) for k, x in results.summary.items()}
        summary["val/time"] = time.perf_counter() - t
        return summary


def _mean_dicts(dicts: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {prefix + k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in sorted(keys)}
