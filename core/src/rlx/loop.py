"""The GRPO loop, top to bottom. It talks only to the three contracts (Generator, Trainer, Environment), the
rollout producer and the algorithm options selected by name (`rlx.algorithms`); it does not know which plugin,
device, cluster or algorithm variant it runs with.

One step:  rollouts (draw prompts -> generate G completions each -> score -> shape rewards; with dynamic sampling,
refill) -> advantages -> pi_old (and reference) log-probs from the trainer -> loss mask and mismatch weights ->
optimizer steps over mini-batches -> push weights to the generator -> metrics.
(Logging, validation periods and checkpoints are the caller's: `rlx.run`.)

Simplifications (stated, as nanochat does): one environment per run; prompts longer than the model's
`max_seq_len - 1` are dropped at load time (counted and reported); completions are cut at
`min(grpo.max_new_tokens, max_seq_len - longest prompt of the round)` tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from rlx.algorithms import Algorithms, select_algorithms
from rlx.async_producer import AsyncRolloutProducer
from rlx.config import GRPOConfig, RolloutConfig, ValidationConfig
from rlx.data import DataCursor, PromptEncoder
from rlx.evaluation import evaluate, status_fractions
from rlx.generation import push_weights_within
from rlx.grpo.losses import MISMATCH_PREFIX, MISMATCH_SUM, MISMATCH_TOKENS
from rlx.grpo.metrics import logprob_mismatch, rollout_metrics, sequence_fractions
from rlx.grpo.mismatch import mismatch_means
from rlx.interfaces import Environment, Generator, Problem, TokenBatch, TrainBatch, Trainer
from rlx.metrics import timed
from rlx.producer import RolloutProducer, StepRollouts
from rlx.rollout import Sample, collate, make_collector

log = logging.getLogger("rlx.loop")


def mini_batches(
    batch: TokenBatch,
    *,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    generator_logprobs: torch.Tensor,
    is_weights: torch.Tensor | None,
    loss_mask: torch.Tensor,
    size: int,
    loss_weights: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
) -> list[TrainBatch]:
    """Shuffle the step's sequences and cut them into mini-batches of `size`, each carrying its loss weights.

    loss_mask (B, T): the tokens that carry loss (the completion mask, less filtered sequences); `loss_weights` maps
    a mini-batch's loss mask to its weights (the selected aggregation). They are computed per mini-batch over all
    of its sequences (the "global batch" of one optimizer step), so any later split into micro-batches or ranks
    gives the same update. Whole sequences stay whole. old_logprobs None: pi_old comes from the training forward.
    """
    perm = torch.randperm(len(batch), generator=generator)
    out = []
    for start in range(0, len(batch), size):
        idx = perm[start : start + size]
        out.append(
            TrainBatch(
                input_ids=batch.input_ids[idx],
                attention_mask=batch.attention_mask[idx],
                completion_mask=batch.completion_mask[idx],
                old_logprobs=None if old_logprobs is None else old_logprobs[idx],
                advantages=advantages[idx],
                loss_weights=loss_weights(loss_mask[idx]),
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[idx],
                generator_logprobs=generator_logprobs[idx],
                is_weights=None if is_weights is None else is_weights[idx],
            )
        )
    return out


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    samples: list[list[Sample]] = field(default_factory=list)  # the step's rollouts, one group per prompt drawn


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
    algorithms: Algorithms | None = None  # default: the options grpo.* names, from the installed plugins
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # episode limits (multi-turn environments)
    timeout_s: float = 1800.0  # asynchronous producer: the longest wait for rollouts or a free generator
    cursor: DataCursor = field(init=False)
    step: int = 0

    def __post_init__(self) -> None:
        if not self.train_problems:
            raise ValueError("the environment returned no training problems")
        if self.pad_id is None:
            self.pad_id = self.encoder.pad_id
        if self.algorithms is None:
            self.algorithms = select_algorithms(self.grpo)
        self.cursor = DataCursor(len(self.train_problems), self.seed)
        self.collector = make_collector(self.generator, self.env, self.encoder, self.rollout)
        self.producer = RolloutProducer(self.collector, self.cursor, self.train_problems, self.grpo)
        self.pipeline = (
            AsyncRolloutProducer(self.producer, max_staleness=self.grpo.max_staleness, step_seed=self.step_seed,
                                 timeout_s=self.timeout_s)
            if self.grpo.max_staleness else None
        )
        self._data_state: dict[str, int] | None = None
        self.loss_fn = self.algorithms.loss_fn()

    def step_seed(self, step: int) -> int:
        return self.seed * 100_003 + step

    def data_state(self) -> dict[str, int]:
        """The data cursor to checkpoint: just after the draws of the last batch trained on (an asynchronous
        producer has drawn further; a resumed run draws those prompts again)."""
        return self._data_state if self._data_state is not None else self.cursor.state()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    def run_step(self) -> StepResult:
        """One GRPO step; returns its metrics (all floats) and rollouts."""
        t0 = time.perf_counter()
        step_seed = self.step_seed(self.step)

        # 1-3. prompts -> G completions each -> scores and shaped rewards (dynamic sampling: refills); asynchronous:
        # generated ahead, while the previous steps trained
        if self.pipeline is None:
            rollouts = self.producer.produce(step_seed)
        else:
            if not self.pipeline.started:
                self.pipeline.start(self.step)
            rollouts = self.pipeline.take(self.step)
        # 4-6. advantages, pi_old, optimizer steps
        timings: dict[str, float] = {}
        advantages, metrics = self.train_on(rollouts, step_seed, timings)
        # 7. push the new weights to the generator: version = the number of steps trained
        self.step += 1
        self._data_state = rollouts.data_state
        with timed(timings, "time/weight_sync"):
            if self.pipeline is None:
                push_weights_within(self.generator, self.trainer.named_weights(), self.step, timeout_s=self.timeout_s)
            else:
                self.pipeline.push(self.trainer.named_weights, self.step)
        drawn = [s for group in rollouts.drawn for s in group]
        metrics.update(rollout_metrics(
            torch.tensor([[s.score.reward for s in group] for group in rollouts.drawn], dtype=torch.float32),
            advantages,
            torch.tensor([s.num_model_tokens for s in drawn], dtype=torch.float32),
            truncated=torch.tensor([s.truncated for s in drawn]),
        ))
        metrics["reward/solved_frac"] = sum(s.score.solved for s in drawn) / len(drawn)
        metrics.update(status_fractions(s.score.status for s in drawn))
        metrics.update(rollouts.metrics)
        metrics.update(self.collector.metrics(drawn))
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["throughput/completion_tokens_per_s"] = sum(s.num_model_tokens for s in drawn) / metrics["time/step"]
        return StepResult(self.step, metrics, rollouts.drawn)

    def train_on(self, rollouts: StepRollouts, step_seed: int,
                 timings: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training half of a step: advantages, pi_old (and reference) log-probs, loss mask and mismatch
        weights, optimizer steps. Returns the (P, G) advantages and the metrics."""
        g, algo = self.grpo, self.algorithms
        assert algo is not None
        samples = [s for group in rollouts.groups for s in group]  # (B = P*G,), prompt-major
        if not samples:  # dynamic sampling found no group with differing rewards: nothing to learn from
            return torch.zeros(0, g.num_generations), {}

        # 4. one advantage per sequence, from its group (and, for some estimators, the whole batch)
        advantages = algo.advantages(rollouts.rewards)  # (P, G)

        # 5. pi_old (and reference) log-probs from the trainer
        batch, gen_logprobs = collate(samples, self.pad_id)
        with timed(timings, "time/logprobs"):
            # from_train_forward: pi_old is the training forward's own (detached) log-probs, no pass here
            recompute = not g.pi_old_from_train_forward
            old_logprobs = self.trainer.logprobs(batch, temperature=g.temperature) if recompute else None
            ref_logprobs = (
                self.trainer.logprobs(batch, temperature=g.temperature, reference=True) if g.kl_coef > 0 else None
            )

        # which tokens carry loss (DAPO overlong filter: none of a truncated completion's), and the importance
        # weights pi_old / pi_generator of the selected mismatch correction
        carries_loss = torch.tensor([not (g.overlong.filter and s.truncated) for s in samples])  # (B,)
        loss_mask = batch.completion_mask & carries_loss.unsqueeze(1)  # (B, T)
        is_weights, mismatch_metrics = (
            algo.mismatch_weights(old_logprobs, gen_logprobs, loss_mask) if old_logprobs is not None else (None, {})
        )

        # 6. optimizer steps over mini-batches
        shuffle = torch.Generator().manual_seed(step_seed)
        train_metrics: list[dict[str, float]] = []
        with timed(timings, "time/train"):
            for _ in range(g.epochs_per_step):
                for mb in mini_batches(
                    batch, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, advantages=advantages.flatten(),
                    generator_logprobs=gen_logprobs, is_weights=is_weights, loss_mask=loss_mask,
                    size=g.mini_batch_size, loss_weights=algo.loss_weights, generator=shuffle,
                ):
                    result = self.trainer.train_step(mb, self.loss_fn, temperature=g.temperature)
                    live = int((mb.loss_weights > 0).any(dim=1).sum())
                    train_metrics.append(sequence_fractions(result, live))

        if old_logprobs is not None:
            metrics = {"logprob_mismatch": logprob_mismatch(gen_logprobs, old_logprobs, batch.completion_mask)}
        else:  # summed by the loss over the one optimizer step's micro-batches
            sums = [(m.pop(MISMATCH_SUM, 0.0), m.pop(MISMATCH_TOKENS, 0.0)) for m in train_metrics]
            tokens = sum(count for _, count in sums)
            metrics = {"logprob_mismatch": sum(total for total, _ in sums) / tokens if tokens else 1.0}
            is_sums: dict[str, float] = {}
            for m in train_metrics:
                for key in [k for k in m if k.startswith(MISMATCH_PREFIX)]:
                    name = key.removeprefix(MISMATCH_PREFIX)
                    is_sums[name] = is_sums.get(name, 0.0) + m.pop(key)
            mismatch_metrics = mismatch_means(is_sums)
        metrics["overlong/filtered_frac"] = float((~carries_loss).double().mean())
        metrics.update(mismatch_metrics)
        metrics.update(_mean_dicts(train_metrics, prefix="train/"))
        return advantages, metrics

    def validate(self) -> dict[str, float]:
        """avg@k (mean of pass@1 over k samples per problem) and unbiased pass@k on the validation problems."""
        v = self.validation
        problems = list(self.val_problems[: v.max_problems] if v.max_problems else self.val_problems)
        if not problems:
            return {}
        t = time.perf_counter()
        with self.pipeline.idle() if self.pipeline is not None else nullcontext():
            summary = self._validate(problems, v)
        summary["val/time"] = time.perf_counter() - t
        return summary

    def _validate(self, problems: list[Problem], v: ValidationConfig) -> dict[str, float]:
        params = self.collector.sampling(
            [self.encoder.encode(p) for p in problems], n=v.samples_per_problem, temperature=v.temperature,
            top_p=v.top_p, top_k=-1, max_new_tokens=v.max_new_tokens or self.grpo.max_new_tokens,
            seed=self.seed + 7919,
        )
        results = evaluate(self.generator, self.env, self.encoder, problems, params, rollout=self.rollout)
        return {f"val/{k}": float(x) for k, x in results.summary.items()}


def _mean_dicts(dicts: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {prefix + k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in sorted(keys)}
