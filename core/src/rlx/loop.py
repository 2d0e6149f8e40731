"""The GRPO loop, top to bottom. It talks only to the three contracts (Generator, Trainer, Environment) and
the pure algorithm in `rlx.grpo`; it does not know which plugin, device or cluster it runs on.

One step:  draw prompts -> generate G completions each -> score -> group advantages -> pi_old (and reference)
log-probs from the trainer -> optimizer steps over mini-batches -> push weights to the generator -> log,
validate, checkpoint.

Simplifications (stated, as nanochat does): one environment per run; prompts longer than the model's
`max_seq_len - 1` are dropped at load time (counted and reported); completions are cut at
`min(grpo.max_new_tokens, max_seq_len - prompt length)` tokens.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlx.config import GRPOConfig, ValidationConfig
from rlx.grpo.advantages import group_advantages
from rlx.grpo.losses import LOSS_AGGREGATIONS, policy_loss
from rlx.grpo.metrics import logprob_mismatch, pass_at_k, rollout_metrics
from rlx.interfaces import Completion, Environment, Generator, Problem, SamplingParams, TokenBatch, TrainBatch, Trainer

log = logging.getLogger("rlx.loop")


# ------------------------------------------------------------------------------------------- prompts & data


class PromptEncoder:
    """Chat messages -> prompt token ids (the model's chat template), completion ids -> text."""

    def __init__(self, tokenizer: Any, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self._cache: dict[str, list[int]] = {}

    def encode(self, problem: Problem) -> list[int]:
        ids = self._cache.get(problem.id)
        if ids is None:
            ids = list(
                self.tokenizer.apply_chat_template(
                    list(problem.messages), add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
            self._cache[problem.id] = ids
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def fits(self, problem: Problem) -> bool:
        return len(self.encode(problem)) < self.max_seq_len


@dataclass
class DataCursor:
    """Where the run is in its training data: a seeded shuffle per epoch, so a resumed run sees the same order.

    It wraps to the next epoch instead of stopping, so a run resumed at an epoch boundary keeps training.
    """

    num_problems: int
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_problems, generator=g).tolist()

    def next_indices(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            order = self._order(self.epoch)
            take = min(count - len(out), self.num_problems - self.index)
            out.extend(order[self.index : self.index + take])
            self.index += take
            if self.index >= self.num_problems:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "num_problems": self.num_problems, "seed": self.seed}

    def load(self, state: dict[str, int]) -> None:
        if state.get("num_problems") != self.num_problems:
            log.warning(
                "training data changed since the checkpoint (%s -> %s problems): data order restarts at this epoch",
                state.get("num_problems"),
                self.num_problems,
            )
            self.epoch, self.index = int(state.get("epoch", 0)), 0
            return
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ------------------------------------------------------------------------------------------- batching


def collate(
    prompts: Sequence[Sequence[int]], completions: Sequence[Completion], pad_id: int
) -> tuple[TokenBatch, torch.Tensor]:
    """Right-padded (B, T) batch of prompt+completion, and the generator's log-probs aligned to it (B, T)."""
    lengths = [len(p) + len(c.token_ids) for p, c in zip(prompts, completions, strict=True)]
    B, T = len(lengths), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    completion_mask = torch.zeros((B, T), dtype=torch.bool)
    gen_logprobs = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n_p, n_c = len(p), len(c.token_ids)
        input_ids[b, :n_p] = torch.tensor(p, dtype=torch.long)
        if n_c:
            input_ids[b, n_p : n_p + n_c] = torch.tensor(c.token_ids, dtype=torch.long)
            gen_logprobs[b, n_p : n_p + n_c] = torch.tensor(c.logprobs, dtype=torch.float32)
        attention[b, : n_p + n_c] = 1
        completion_mask[b, n_p : n_p + n_c] = True
    return TokenBatch(input_ids, attention, completion_mask), gen_logprobs


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


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]


@dataclass
class GRPOLoop:
    """Holds the components and runs GRPO steps. `hooks` are called after each step (logging, checkpoints)."""

    generator: Generator
    trainer: Trainer
    env: Environment
    encoder: PromptEncoder
    grpo: GRPOConfig
    validation: ValidationConfig
    seed: int
    pad_id: int
    train_problems: Sequence[Problem]
    val_problems: Sequence[Problem] = ()
    cursor: DataCursor = field(init=False)
    step: int = 0

    def __post_init__(self) -> None:
        if not self.train_problems:
            raise ValueError("the environment returned no training problems")
        self.cursor = DataCursor(len(self.train_problems), self.seed)
        self.loss_fn: Callable = functools.partial(
            policy_loss,
            clip_low=self.grpo.clip_low,
            clip_high=self.grpo.clip_high,
            dual_clip=self.grpo.dual_clip,
            kl_coef=self.grpo.kl_coef,
        )

    def sampling(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float, top_k: int,
                 max_new_tokens: int, seed: int) -> SamplingParams:
        room = self.encoder.max_seq_len - max(len(p) for p in prompts)
        return SamplingParams(
            n=n, temperature=temperature, top_p=top_p, top_k=top_k,
            max_new_tokens=max(1, min(max_new_tokens, room)), seed=seed,
        )

    def run_step(self) -> StepResult:
        """One GRPO step; returns its metrics (all floats)."""
        g = self.grpo
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        step_seed = self.seed * 100_003 + self.step

        # 1. prompts
        problems = [self.train_problems[i] for i in self.cursor.next_indices(g.prompts_per_step)]
        prompts = [self.encoder.encode(p) for p in problems]

        # 2. generate G completions per prompt
        t = time.perf_counter()
        self.generator.wake_up()  # colocated engines reclaim their KV cache (weights came back with the update)
        timings["time/wake_up"] = time.perf_counter() - t
        t = time.perf_counter()
        params = self.sampling(prompts, n=g.num_generations, temperature=g.temperature, top_p=g.top_p,
                               top_k=g.top_k, max_new_tokens=g.max_new_tokens, seed=step_seed)
        groups = self.generator.generate(prompts, params)
        timings["time/generate"] = time.perf_counter() - t
        t = time.perf_counter()
        self.generator.sleep()  # free accelerator memory for the trainer
        timings["time/sleep"] = time.perf_counter() - t
        completions = [c for group in groups for c in group]  # (P*G,), prompt-major
        flat_prompts = [p for p in prompts for _ in range(g.num_generations)]
        flat_problems = [p for p in problems for _ in range(g.num_generations)]

        # 3. score
        t = time.perf_counter()
        texts = [self.encoder.decode(c.token_ids) for c in completions]
        scores = self.env.score(flat_problems, texts)
        timings["time/score"] = time.perf_counter() - t
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32).view(len(problems), g.num_generations)

        # 4. advantages: one per sequence, from its group of G
        advantages = group_advantages(rewards, baseline=g.baseline, normalize_std=g.normalize_std)  # (P, G)

        # 5. pi_old (and reference) log-probs from the trainer
        batch, gen_logprobs = collate(flat_prompts, completions, self.pad_id)
        t = time.perf_counter()
        old_logprobs = self.trainer.logprobs(batch, temperature=g.temperature)
        ref_logprobs = self.trainer.logprobs(batch, temperature=g.temperature, reference=True) if g.kl_coef > 0 else None
        timings["time/logprobs"] = time.perf_counter() - t

        # 6. optimizer steps over mini-batches
        t = time.perf_counter()
        shuffle = torch.Generator().manual_seed(step_seed)
        train_metrics: list[dict[str, float]] = []
        for _ in range(g.epochs_per_step):
            for mb in mini_batches(
                batch, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, advantages=advantages.flatten(),
                generator_logprobs=gen_logprobs, size=g.mini_batch_size, loss_agg=g.loss_agg, generator=shuffle,
            ):
                train_metrics.append(self.trainer.train_step(mb, self.loss_fn, temperature=g.temperature))
        timings["time/train"] = time.perf_counter() - t

        # 7. push the new weights to the generator
        t = time.perf_counter()
        self.generator.update_weights(self.trainer.named_weights())
        timings["time/weight_sync"] = time.perf_counter() - t

        self.step += 1
        metrics = rollout_metrics(
            rewards,
            advantages,
            torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32),
            truncated=torch.tensor([c.finish_reason == "length" for c in completions]),
        )
        metrics.update(_status_counts(s.status for s in scores))
        metrics["logprob_mismatch"] = logprob_mismatch(gen_logprobs, old_logprobs, batch.completion_mask)
        metrics.update(_mean_dicts(train_metrics, prefix="train/"))
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - t0
        n_tokens = int(batch.completion_mask.sum())
        metrics["throughput/completion_tokens_per_s"] = n_tokens / metrics["time/step"]
        return StepResult(self.step, metrics)

    def validate(self) -> dict[str, float]:
        """avg@k (mean reward over k samples per problem) and unbiased pass@k on the validation problems."""
        v = self.validation
        problems = list(self.val_problems[: v.max_problems] if v.max_problems else self.val_problems)
        if not problems:
            return {}
        t = time.perf_counter()
        results = evaluate(
            self.generator, self.env, self.encoder, problems,
            params=self.sampling(
                [self.encoder.encode(p) for p in problems], n=v.samples_per_problem, temperature=v.temperature,
                top_p=v.top_p, top_k=-1, max_new_tokens=v.max_new_tokens or self.grpo.max_new_tokens,
                seed=self.seed + 7919,
            ),
        )
        summary = {f"val/{k}": float(x) for k, x in results.summary.items()}
        summary["val/time"] = time.perf_counter() - t
        return summary


# ------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    summary: dict[str, float]
    per_problem: list[dict[str, Any]]


def evaluate(
    generator: Generator, env: Environment, encoder: PromptEncoder, problems: Sequence[Problem], params: SamplingParams
) -> EvalResult:
    """Generate k = params.n samples per problem and score them: accuracy (= avg@k, mean of pass@1), pass@k."""
    generator.wake_up()
    groups = generator.generate([encoder.encode(p) for p in problems], params)
    generator.sleep()
    k = params.n
    texts = [encoder.decode(c.token_ids) for group in groups for c in group]
    scores = env.score([p for p in problems for _ in range(k)], texts)
    per_problem = []
    for i, problem in enumerate(problems):
        mine = scores[i * k : (i + 1) * k]
        correct = sum(1 for s in mine if s.reward > 0.5)
        per_problem.append(
            {
                "id": problem.id,
                "answer": problem.answer,
                "num_samples": k,
                "num_correct": correct,
                "rewards": [s.reward for s in mine],
                "statuses": [s.status for s in mine],
                "completions": texts[i * k : (i + 1) * k],
            }
        )
    acc = sum(p["num_correct"] for p in per_problem) / (k * len(problems))
    summary = {"accuracy": acc, f"avg@{k}": acc, "num_problems": float(len(problems))}
    for kk in sorted({1, k} | {x for x in (2, 4, 8, 16) if x < k}):
        summary[f"pass@{kk}"] = sum(pass_at_k(k, p["num_correct"], kk) for p in per_problem) / len(problems)
    summary.update(_status_counts(s.status for s in scores))
    return EvalResult(summary, per_problem)


def _status_counts(statuses) -> dict[str, float]:
    counts = {"correct": 0, "wrong": 0, "no_answer": 0, "timeout": 0, "error": 0}
    total = 0
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
        total += 1
    return {f"score/{k}_frac": v / max(total, 1) for k, v in counts.items()}


def _mean_dicts(dicts: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {prefix + k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in sorted(keys)}
