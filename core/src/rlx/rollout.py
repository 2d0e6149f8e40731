"""Rollouts as token-in/token-out records: what was sampled (token ids and the generator's log-probs, exactly as
generated), what was scored, and which tokens the loss may touch. `RolloutCollector` produces them; `collate`
pads them into the (B, T) batch the trainer takes (the only place anything is padded).

Shapes: P = prompts, G = samples per prompt (a group), B = P*G sequences, T = longest prompt + response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlx.data import PromptEncoder
from rlx.interfaces import Completion, Environment, Generator, Problem, SamplingParams, Score, TokenBatch


@dataclass(frozen=True)
class Sample:
    """One rollout of one problem.

    prompt_ids: the context before the first sampled token. response_ids: every token after it (the model's
    tokens and, in multi-turn episodes, observation tokens between turns), with the generator's log-probs
    (0.0 on observation tokens) and `loss_mask` True exactly on the tokens the model sampled.
    text: the model output as scored. policy_version: the trainer step whose weights sampled it (None: unknown).
    """

    problem: Problem
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    response_logprobs: tuple[float, ...]
    loss_mask: tuple[bool, ...]
    finish_reason: str
    text: str
    score: Score
    policy_version: int | None = None
    num_turns: int = 1

    @classmethod
    def single_turn(cls, problem: Problem, prompt_ids: Sequence[int], completion: Completion, text: str,
                    score: Score) -> Sample:
        return cls(
            problem=problem,
            prompt_ids=tuple(prompt_ids),
            response_ids=tuple(completion.token_ids),
            response_logprobs=tuple(completion.logprobs),
            loss_mask=(True,) * len(completion.token_ids),
            finish_reason=completion.finish_reason,
            text=text,
            score=score,
            policy_version=getattr(completion, "policy_version", None),
        )

    @property
    def num_model_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def collate(samples: Sequence[Sample], pad_id: int) -> tuple[TokenBatch, torch.Tensor]:
    """Right-padded (B, T) batch of prompt + response (completion_mask = the loss mask), and the generator's
    log-probs aligned to it (B, T)."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    B, T = len(samples), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    completion_mask = torch.zeros((B, T), dtype=torch.bool)
    gen_logprobs = torch.zeros((B, T), dtype=torch.float32)
    for b, s in enumerate(samples):
        n_p, n_r = len(s.prompt_ids), len(s.response_ids)
        input_ids[b, :n_p] = torch.tensor(s.prompt_ids, dtype=torch.long)
        if n_r:
            input_ids[b, n_p : n_p + n_r] = torch.tensor(s.response_ids, dtype=torch.long)
            gen_logprobs[b, n_p : n_p + n_r] = torch.tensor(s.response_logprobs, dtype=torch.float32)
            completion_mask[b, n_p : n_p + n_r] = torch.tensor(s.loss_mask, dtype=torch.bool)
        attention[b, : n_p + n_r] = 1
    return TokenBatch(input_ids, attention, completion_mask), gen_logprobs


class RolloutCollector:
    """Samples `params.n` completions per problem and scores them: one group of Samples per problem, in order.

    Single-turn: one batched `generate`, then one `score` call for the whole batch."""

    def __init__(self, generator: Generator, env: Environment, encoder: PromptEncoder) -> None:
        self.generator = generator
        self.env = env
        self.encoder = encoder

    def sampling(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float, top_k: int,
                 max_new_tokens: int, seed: int | None) -> SamplingParams:
        """Sampling settings with max_new_tokens capped so the longest prompt + completion fits max_seq_len."""
        room = self.encoder.max_seq_len - max(len(p) for p in prompts)
        return SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                              max_new_tokens=max(1, min(max_new_tokens, room)), seed=seed)

    def generate(self, problems: Sequence[Problem], params: SamplingParams) -> list[list[Completion]]:
        return self.generator.generate([self.encoder.encode(p) for p in problems], params)

    def score(self, problems: Sequence[Problem], groups: Sequence[Sequence[Completion]]) -> list[list[Sample]]:
        flat = [(p, c) for p, group in zip(problems, groups, strict=True) for c in group]
        texts = [self.encoder.decode(c.token_ids) for _, c in flat]
        scores = self.env.score([p for p, _ in flat], texts)
        samples = [
            Sample.single_turn(p, self.encoder.encode(p), c, text, score)
            for (p, c), text, score in zip(flat, texts, scores, strict=True)
        ]
        out, start = [], 0
        for group in groups:
            out.append(samples[start : start + len(group)])
            start += len(group)
        return out

    def collect(self, problems: Sequence[Problem], params: SamplingParams) -> list[list[Sample]]:
        return self.score(problems, self.generate(problems, params))
