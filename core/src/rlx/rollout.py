"""Rollouts as token-in/token-out records: what was sampled (token ids and the generator's log-probs, exactly as
generated), what was scored, and which tokens the loss may touch. `RolloutCollector` produces them for single-turn
environments, `EpisodeCollector` for multi-turn ones (`make_collector` picks); `collate` pads them into the (B, T)
batch the trainer takes (the only place anything is padded).

Shapes: P = prompts, G = samples per prompt (a group), B = P*G sequences, T = longest prompt + response.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from rlx.calls import CallResult, DeadlineCalls
from rlx.chat import ChatTokens
from rlx.config import RolloutConfig
from rlx.contracts import check_step_result
from rlx.data import PromptEncoder
from rlx.errors import ComponentError
from rlx.interfaces import (
    Completion,
    Environment,
    Episode,
    EpisodeEnvironment,
    Generator,
    Message,
    Observation,
    Problem,
    SamplingParams,
    Score,
    TokenBatch,
    Turn,
)


@dataclass(frozen=True)
class Sample:
    """One rollout of one problem.

    prompt_ids: the context before the first sampled token. response_ids: every token after it (the model's
    tokens and, in multi-turn episodes, observation tokens between turns), with the generator's log-probs
    (0.0 on observation tokens) and `loss_mask` True exactly on the tokens the model sampled.
    text: the model output as scored (episodes: the whole response decoded, template markers kept).
    policy_version: the trainer step whose weights sampled it (None: unknown).
    Episodes also carry `num_turns`, `turn_rewards` (one per model turn; their sum is `score.reward`) and the
    `transcript` (the model's turns and the observations, as chat messages).
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
    turn_rewards: tuple[float, ...] = ()
    transcript: tuple[Message, ...] = ()

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
    def num_observation_tokens(self) -> int:
        return len(self.loss_mask) - self.num_model_tokens

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


log = logging.getLogger("rlx.rollout")


class RolloutCollector:
    """Samples `params.n` completions per problem and scores them: one group of Samples per problem, in order.

    Single-turn: one batched `generate`, then one `score` call for the whole batch. (`EpisodeCollector` has the same
    methods for multi-turn environments; `make_collector` picks the one an environment needs.)"""

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
        return _regroup(samples, [len(g) for g in groups])

    def collect(self, problems: Sequence[Problem], params: SamplingParams) -> list[list[Sample]]:
        return self.score(problems, self.generate(problems, params))

    def metrics(self, samples: Sequence[Sample]) -> dict[str, float]:
        """Rollout metrics beyond the loop's own (none for single-turn)."""
        return {}


def _regroup(items: list, sizes: Sequence[int]) -> list[list]:
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


# ------------------------------------------------------------------------------------------------ episodes


@dataclass
class EpisodeRun:
    """One episode in flight: the environment's `Episode` and the token sequence it has grown, as the core keeps it.

    The sequence is `prompt_ids + response_ids`; `response_ids` holds each model turn exactly as sampled
    (`loss_mask` True, the generator's log-probs) and each observation as the chat template renders it
    (`loss_mask` False, log-probs 0). An episode is independent of every other, so runs can be stepped in any
    order or interleaving (the synchronous loop steps them in rounds).
    """

    problem: Problem
    prompt_ids: tuple[int, ...]
    episode: Episode | None = None
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    transcript: list[Message] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    policy_version: int | None = None
    outcome: Score | None = None  # set when the episode ends
    last_turn: Completion | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def num_turns(self) -> int:
        return len(self.turn_rewards) + (self.last_turn is not None)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def prefix(self) -> list[int]:
        """What the generator continues from: the prompt and everything so far."""
        return [*self.prompt_ids, *self.response_ids]

    def add_turn(self, completion: Completion, text: str) -> Turn:
        """Append the model's turn (exactly the sampled ids) and return it as the environment receives it."""
        index = self.num_turns
        self.response_ids.extend(completion.token_ids)
        self.logprobs.extend(completion.logprobs)
        self.loss_mask.extend([True] * len(completion.token_ids))
        self.transcript.append({"role": "assistant", "content": text})
        self.finish_reason = completion.finish_reason
        if self.policy_version is None:
            self.policy_version = getattr(completion, "policy_version", None)
        self.last_turn = completion
        return Turn(text=text, token_ids=tuple(completion.token_ids), finish_reason=completion.finish_reason,
                    index=index)

    def add_observation(self, observation: Observation, token_ids: Sequence[int]) -> None:
        """Append the environment's observation (context: masked out of the loss, log-probs 0)."""
        self._close_turn(observation.reward)
        self.response_ids.extend(token_ids)
        self.logprobs.extend([0.0] * len(token_ids))
        self.loss_mask.extend([False] * len(token_ids))
        self.transcript.extend(dict(m) for m in observation.messages)

    def _close_turn(self, reward: float) -> None:
        if self.last_turn is not None:
            self.turn_rewards.append(float(reward))
            self.last_turn = None

    def end(self, score: Score) -> None:
        """End with the environment's Score (its reward is the last turn's; the episode's is the sum of all turns)."""
        self._close_turn(score.reward)
        self.outcome = Score(math.fsum(self.turn_rewards), score.status, score.correct)

    def stop(self, status: str, turn_reward: float = 0.0) -> None:
        """End at a limit or failure the core detected (reward: what earlier turns earned)."""
        self._close_turn(turn_reward)
        self.outcome = Score(math.fsum(self.turn_rewards), status, False)

    def to_sample(self, text: str) -> Sample:
        assert self.outcome is not None, "to_sample() on an episode that has not ended"
        return Sample(
            problem=self.problem,
            prompt_ids=self.prompt_ids,
            response_ids=tuple(self.response_ids),
            response_logprobs=tuple(self.logprobs),
            loss_mask=tuple(self.loss_mask),
            finish_reason=self.finish_reason,
            text=text,
            score=self.outcome,
            policy_version=self.policy_version,
            num_turns=len(self.turn_rewards),
            turn_rewards=tuple(self.turn_rewards),
            transcript=tuple(self.transcript),
        )


class EpisodeCollector(RolloutCollector):
    """Runs `params.n` episodes per problem to their end and returns them as Samples, one group per problem.

    Each round: the next turn of every live episode, sampled from its token prefix (engines with prefix caching
    reuse the shared part) in one `generate` call (episodes with the same prefix, e.g. a group's G episodes in
    the first round, are one prompt with n samples; a call per distinct n and per-turn token cap, which is
    min(max_new_tokens, tokens left in the episode's budget)), then every episode's `step` in parallel on worker
    threads with a deadline (`rollout.env_timeout_s`).

    Limits end an episode with a status (`rlx.interfaces.EPISODE_LIMIT_STATUSES`): after `max_turns` model turns an
    observation ends it ("max_turns"); with no room for another turn within `max_tokens` (and the model's
    max_seq_len) it ends ("token_budget", the observation that did not fit is dropped); a call that raises,
    overruns or breaks the contract ends it ("env_error" / "env_timeout"). The reward of such an episode is what its
    earlier turns earned (0 unless the environment gives per-turn rewards).
    """

    def __init__(self, generator: Generator, env: Environment, encoder: PromptEncoder,
                 limits: RolloutConfig | None = None) -> None:
        super().__init__(generator, env, encoder)
        if not isinstance(env, EpisodeEnvironment):
            raise TypeError(f"EpisodeCollector needs an environment with start_episode(); got {type(env).__name__}")
        self.limits = limits or RolloutConfig()
        self.budget = min(self.limits.max_tokens or encoder.max_seq_len, encoder.max_seq_len)
        self.chat = ChatTokens(encoder.tokenizer)
        self.calls = DeadlineCalls(self.limits.env_workers, self.limits.env_timeout_s)
        self.label = getattr(env, "label", type(env).__name__)
        self.last_stats: dict[str, float] = {}

    def generate(self, problems: Sequence[Problem], params: SamplingParams) -> list[list[EpisodeRun]]:  # type: ignore[override]
        """Run every episode to its end: `params.n` per problem, `params.max_new_tokens` per model turn."""
        runs = [EpisodeRun(p, tuple(self.encoder.encode(p))) for p in problems for _ in range(params.n)]
        stats: dict[str, float] = defaultdict(float)
        errors: list[str] = []
        t = time.perf_counter()
        episode_env: EpisodeEnvironment = self.env  # type: ignore[assignment]
        started = self.calls.run([functools.partial(episode_env.start_episode, r.problem) for r in runs])
        stats["time/env"] += time.perf_counter() - t
        for run, result in zip(runs, started, strict=True):
            if result.ok and callable(getattr(result.value, "step", None)):
                run.episode = result.value
            else:
                self._fail(run, result, "start_episode", errors)
        rounds = 0
        while live := [r for r in runs if not r.done]:
            for run in live:
                if self.budget - run.length < 1:
                    run.stop("token_budget")
            live = [r for r in live if not r.done]
            if not live:
                break
            turns = self._model_turns(live, params, rounds)
            t = time.perf_counter()
            steps = [functools.partial(r.episode.step, turn) for r, turn in zip(live, turns, strict=True)]  # type: ignore[union-attr]
            results = self.calls.run(steps)
            stats["time/env"] += time.perf_counter() - t
            for run, result in zip(live, results, strict=True):
                self._advance(run, result, errors)
            rounds += 1
        if errors:
            log.warning("%s: %d episode call(s) failed this batch; first: %s", self.label, len(errors), errors[0])
        stats["episode/rounds"] = rounds
        stats["episode/env_calls_abandoned_total"] = self.calls.abandoned
        self.last_stats = dict(stats)
        return _regroup(runs, [params.n] * len(problems))

    def _model_turns(self, live: list[EpisodeRun], params: SamplingParams, round_index: int) -> list[Turn]:
        """One model turn for each live episode.

        Episodes with the same prefix (all G of a group in the first round; later, those that said and heard the
        same) are one prompt sampled n times: engines that seed each request with `params.seed` (vLLM) would
        return the same sample for identical prompts sent separately. One call per distinct (token cap, n)."""
        shared: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
        for i, run in enumerate(live):
            shared[(min(params.max_new_tokens, self.budget - run.length), tuple(run.prefix()))].append(i)
        calls: dict[tuple[int, int], list[tuple[tuple[int, ...], list[int]]]] = defaultdict(list)
        for (cap, prefix), members in shared.items():
            calls[(cap, len(members))].append((prefix, members))
        turns: list[Turn | None] = [None] * len(live)
        for (cap, n), prompts in sorted(calls.items(), reverse=True):
            seed = None if params.seed is None else (params.seed * 1_000_003 + round_index * 7_919 + cap * 131 + n) % 2**62
            call = replace(params, n=n, max_new_tokens=cap, seed=seed)
            completions = self.generator.generate([prefix for prefix, _ in prompts], call)
            for (_, members), group in zip(prompts, completions, strict=True):
                for i, completion in zip(members, group, strict=True):
                    turns[i] = live[i].add_turn(completion, self.encoder.decode(completion.token_ids))
        return turns  # type: ignore[return-value]

    def _advance(self, run: EpisodeRun, result: CallResult, errors: list[str]) -> None:
        """Apply what the environment answered to the model's turn (or end the episode on a failure or limit)."""
        if not result.ok:
            self._fail(run, result, "step", errors)
            return
        try:
            answer = check_step_result(result.value, self.label)
        except ComponentError as exc:
            errors.append(str(exc))
            run.stop("env_error")
            return
        if isinstance(answer, Score):
            run.end(answer)
            return
        if run.num_turns >= self.limits.max_turns:
            run.stop("max_turns", answer.reward)
            return
        stop_token = run.last_turn.token_ids[-1] if run.finish_reason == "stop" and run.last_turn.token_ids else None  # type: ignore[union-attr]
        ids = self.chat.observation_ids(answer.messages, stop_token)
        if run.length + len(ids) >= self.budget:  # the next turn would have no room
            run.stop("token_budget", answer.reward)
            return
        run.add_observation(answer, ids)

    def _fail(self, run: EpisodeRun, result: CallResult, call: str, errors: list[str]) -> None:
        if result.timed_out:
            errors.append(f"{call}() ran past rollout.env_timeout_s={self.limits.env_timeout_s:g}s")
            run.stop("env_timeout")
        else:
            detail = f"{type(result.error).__name__}: {result.error}" if result.error is not None else (
                f"returned a {type(result.value).__name__}, not an Episode (an object with step(turn))")
            errors.append(f"{call}() {detail}")
            run.stop("env_error")

    def score(self, problems: Sequence[Problem], groups: Sequence[Sequence[EpisodeRun]]) -> list[list[Sample]]:  # type: ignore[override]
        """Finished episodes as Samples (their Scores came from the episodes themselves)."""
        decode = self.encoder.tokenizer.decode
        return [[r.to_sample(decode(r.response_ids, skip_special_tokens=False)) for r in group] for group in groups]

    def metrics(self, samples: Sequence[Sample]) -> dict[str, float]:
        """Turns per episode, the share of response tokens that are observations, time in environment calls."""
        response = sum(len(s.response_ids) for s in samples)
        out = {
            "episode/turns_mean": sum(s.num_turns for s in samples) / max(len(samples), 1),
            "episode/turns_max": float(max((s.num_turns for s in samples), default=0)),
            "episode/observation_token_frac": sum(s.num_observation_tokens for s in samples) / max(response, 1),
        }
        out.update(self.last_stats)
        return out


def make_collector(generator: Generator, env: Environment, encoder: PromptEncoder,
                   limits: RolloutConfig | None = None) -> RolloutCollector:
    """`EpisodeCollector` for an environment with episodes (`start_episode`), else the single-turn collector."""
    if isinstance(env, EpisodeEnvironment):
        return EpisodeCollector(generator, env, encoder, limits)
    return RolloutCollector(generator, env, encoder)
