"""The three component contracts (Generator, Trainer, Environment) and the small frozen types they exchange.

Importing this module never imports torch-heavy code or any engine: tensors are type-only here.
Shapes: B = sequences in a batch, T = padded sequence length (prompt + completion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]
Split = Literal["train", "validation"]


# --------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `top_k <= 0` and `top_p == 1.0` mean "disabled".

    `stop_token_ids` end a completion (the stop token is kept as the last completion token,
    finish_reason "stop"); the model's EOS token(s) always stop, whatever this holds.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of one prompt.

    `logprobs[i]` is log p(token_ids[i] | prompt, token_ids[:i]) under softmax(logits / temperature), i.e.
    after temperature and before top-k/top-p filtering: the same quantity the trainer computes, so the two
    can be compared token by token (the train-vs-generator mismatch metric).

    `policy_version` is the weight version (`update_weights(..., version=v)`) that sampled the first token, None
    where unknown (no versioned push yet). When weights changed while the completion was in flight (a partial
    rollout), `version_switches` lists each change as (token_index, version): token_ids[token_index:] up to the
    next switch were sampled by `version`. Empty when one version sampled every token, so `policy_version` is
    always the oldest version in the completion (the one a staleness bound applies to).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    policy_version: int | None = None
    version_switches: tuple[tuple[int, int | None], ...] = ()

    def token_versions(self) -> tuple[int | None, ...]:
        """The policy version that sampled each token (len == len(token_ids))."""
        versions = [self.policy_version] * len(self.token_ids)
        for index, version in self.version_switches:
            versions[index:] = [version] * (len(versions) - index)
        return tuple(versions)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete `params.n` times with its own sampling settings (per-request max_new_tokens, n,
    seed); `id` names it in what `StreamingGenerator.collect` returns and must be unique among pending requests."""

    id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams = SamplingParams()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_ids, tuple):  # accept any sequence of ints, keep the frozen tuple
            object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))


class GenerationResult(NamedTuple):
    """A finished request: its id and exactly `params.n` completions (unpacks as `(request_id, completions)`)."""

    request_id: str
    completions: list[Completion]


NamedTensors = Iterable[tuple[str, "torch.Tensor"]]


@runtime_checkable
class Generator(Protocol):
    """Samples completions for token-id prompts and follows the trainer's weights."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt in order, exactly `params.n` completions."""
        ...

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Load new policy weights in place (HF parameter names, full unsharded tensors).

        `weights` is an iterator: consume it once, in bounded-size buckets, never holding a second
        full copy of the model. After this returns, `generate` samples from the new weights, and completions
        report `version` as their `policy_version`. If the push does not complete (it raises, or is abandoned),
        the generator must refuse to serve (`rlx.errors.WeightPushIncompleteError`) until a later push completes:
        it may hold a mix of old and new weights. `version` is optional: older plugins that take only `weights`
        still work (`rlx.generation.push_weights` and the streaming adapter call them without it).
        """
        ...

    def sleep(self) -> None:
        """Release accelerator memory (weights and KV cache) while the trainer trains; no-op where none. The weights
        are kept (e.g. in host memory): after `wake_up` the generator samples as before.

        Optional capability: a generator whose class or instance sets `can_drop_weights_on_sleep = True` also takes
        `sleep(drop_weights=True)`, a promise from the caller that a complete `update_weights` comes before the next
        `wake_up`/`generate`/`submit`, so it may discard its weights instead of keeping them (vLLM's sleep level 2).
        Until such a push completes it must refuse to wake or sample (a clear error, never garbage). The loop asks
        for it through `rlx.generation.sleep_before_weight_push`; generators without the attribute get `sleep()`.
        """
        ...

    def wake_up(self) -> None:
        """Reclaim what `sleep` released (weights first, then KV cache)."""
        ...

    def close(self) -> None:
        """Free everything; the generator is not used afterwards."""
        ...


@runtime_checkable
class StreamingGenerator(Generator, Protocol):
    """A Generator that also takes requests one by one and hands each back as soon as it finishes.

    Optional: `rlx.generation.as_streaming(generator)` returns the generator itself when it has these methods,
    else an adapter that serves them with batch `generate` calls, so a batch-only plugin works unchanged.
    submit, collect, num_pending and update_weights may be called from different threads; update_weights waits
    for the engine step (or, on the adapter, the `generate` call) in progress, never for a whole collect.
    """

    #: True: `update_weights` between collects keeps in-flight requests going under the new weights (partial
    #: rollouts; their completions carry `version_switches`). False: it first finishes the requests in flight.
    partial_rollouts: bool

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Queue requests (each with its own SamplingParams); returns at once. Raises on a malformed request or
        an id already pending, before queueing any of them."""
        ...

    def collect(self, *, min_results: int = 1, timeout_s: float | None = None) -> list[GenerationResult]:
        """Every finished request not yet collected, in any order, once at least `min_results` of them (or every
        pending one, if fewer are pending) have finished or `timeout_s` has passed (then possibly fewer, or none).
        Engines that run in this process advance inside collect: timeout_s=0 polls without generating."""
        ...

    def num_pending(self) -> int:
        """Requests submitted and not yet returned by collect (queued, running or finished)."""
        ...


# --------------------------------------------------------------------------------------------- trainer# --------------------------------------------------------------------------------------------- trainer


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded token sequences (prompt followed by completion).

    input_ids:       (B, T) int64
    attention_mask:  (B, T) int64/bool, 1 on real tokens (prompt and completion)
    completion_mask: (B, T) bool, 1 on completion tokens, the positions whose log-probabilities matter
    Log-probabilities returned for such a batch are aligned to `input_ids`: out[b, t] =
    log p(input_ids[b, t] | input_ids[b, :t]); positions outside `completion_mask` are 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class TrainBatch(TokenBatch):
    """A TokenBatch with everything the GRPO loss needs.

    old_logprobs:  (B, T) float32, pi_old per-token log-probabilities (from the trainer, before the update)
    advantages:    (B,)   float32, one advantage per sequence
    loss_weights:  (B, T) float32, how much each token's loss counts. They already carry the global
                   normalisation (e.g. 1 / number of valid tokens in the whole mini-batch), so a trainer
                   computes sum(per_token_loss * loss_weights) on any shard or micro-batch and SUMS
                   gradients over micro-batches and ranks: the update is exact for any split.
    ref_logprobs:  (B, T) float32 or None, reference policy log-probabilities (only when the KL term is on)
    generator_logprobs: (B, T) float32 or None, the generator's log-probabilities (for metrics only)
    is_weights:    (B, T) float32 or None, train/generator mismatch importance weights pi_old / pi_generator
                   (constants, no grad; 0 = masked), multiplying the policy-gradient term
    """

    old_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    loss_weights: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    generator_logprobs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None


PolicyLossFn = Callable[["torch.Tensor", TrainBatch], tuple["torch.Tensor", dict[str, "torch.Tensor"]]]
"""(new_logprobs (B, T), batch) -> (loss: scalar = sum(per_token_loss * loss_weights), metrics).

Metric tensors are *sums over tokens weighted by loss_weights* (so they add up exactly across
micro-batches and ranks like the loss), except `<name>_seqs`: counts of sequences (also additive). Must be
picklable (a module-level function or a functools.partial of one) so it can travel to trainer worker processes.

Requirement on trainers: every row of the batch handed to the loss is one WHOLE sequence (micro-batches split
the batch by rows, never a sequence across micro-batches or ranks; a trainer that packs sequences must hand the
loss (B, T) rows again), because sequence-level losses (GSPO's geometric-mean ratio) sum over a row's tokens.
"""


@runtime_checkable
class Trainer(Protocol):
    """Owns the policy being trained: log-probabilities, optimizer steps, weights out, checkpoints."""

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32 per-token log-probabilities of `batch` under the current (or the frozen
        reference) policy, computed on logits / temperature. Never materialises more than one
        micro-batch of logits."""
        ...

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One optimizer step on `batch` (micro-batched inside), with new log-probabilities computed on
        logits / temperature (the temperature the completions were sampled and pi_old was computed at).
        Returns metrics, incl. grad_norm and lr."""
        ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream the current policy weights, one full (unsharded) tensor at a time, HF parameter names."""
        ...

    def save_checkpoint(self, path: str) -> None:
        """Write model, optimizer and LR schedule state under `path` (a directory)."""
        ...

    def load_checkpoint(self, path: str) -> None:
        """Restore what `save_checkpoint` wrote."""
        ...

    def export_hf(self, path: str) -> None:
        """Write a Hugging Face model folder (safetensors + config + tokenizer + generation config)."""
        ...

    def close(self) -> None:
        ...


# --------------------------------------------------------------------------------------------- environment


Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Problem:
    """One task instance. `messages` are chat messages; the core applies the model's chat template."""

    id: str
    messages: tuple[Message, ...]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


ScoreStatus = str
"""Why a score is what it is. Common values: "correct" / "wrong" (graded), "partial", "no_answer" (nothing to grade
was found), "timeout" / "error" (grading itself failed: counted and reported, never raised). Environments may use
their own; the loop reports the fraction of each status it sees (`score/<status>_frac`).

The core ends an episode itself (see `EpisodeEnvironment`) with one of `EPISODE_LIMIT_STATUSES`: "max_turns" (the
model used `rollout.max_turns` turns and the environment still answered with an observation), "token_budget" (no
room left for another model turn within `rollout.max_tokens`), "env_timeout" (a `start_episode` / `step` call took
longer than `rollout.env_timeout_s`), "env_error" (it raised, or returned something the contract does not allow)."""

EPISODE_LIMIT_STATUSES: tuple[ScoreStatus, ...] = ("max_turns", "token_budget", "env_timeout", "env_error")


@dataclass(frozen=True)
class Score:
    """The reward for one completion, and why it is what it is.

    reward: any finite float (the environment's scale: {0, 1}, [-1, 1], partial credit...).
    status: see `ScoreStatus`.
    correct: whether the completion solved the problem (accuracy, pass@k and `reward/solved_frac` count these).
    None means "not said": then status == "correct" decides.
    """

    reward: float
    status: ScoreStatus
    correct: bool | None = None

    @property
    def solved(self) -> bool:
        return self.correct if self.correct is not None else self.status == "correct"


@runtime_checkable
class Environment(Protocol):
    """Provides problems and scores completions. Pure Python; never raises on bad model output."""

    def problems(self, split: Split) -> Sequence[Problem]:
        """The train or validation problems (validation may be empty)."""
        ...

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """Score completions[i] (decoded text, special tokens removed) as an answer to problems[i]."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class Turn:
    """One model turn of an episode, as the environment receives it.

    text: the turn decoded (special tokens removed). token_ids: exactly what the generator sampled (ending with the
    stop token when finish_reason is "stop"). finish_reason "length": the turn was cut at its token limit.
    index: 0 for the model's first turn.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    index: int


@dataclass(frozen=True)
class Observation:
    """The environment's answer to a turn when the episode goes on: chat messages that follow the model's turn
    (e.g. `{"role": "user", "content": "higher"}` or `{"role": "tool", "content": stdout}`), rendered with the
    model's chat template and appended to the episode as context (never trained on).

    reward: this turn's reward, added to the episode's return (default 0: only the final Score counts).
    """

    messages: tuple[Message, ...]
    reward: float = 0.0


@runtime_checkable
class Episode(Protocol):
    """One multi-turn interaction, started from a Problem: a state machine driven by the model's turns.

    Episodes of the same environment are independent (the core steps many at once, from worker threads, and may
    step them asynchronously); keep per-episode state on the episode. A call should return promptly: the core ends
    an episode whose call overruns `rollout.env_timeout_s` (status "env_timeout"), and one whose call raises
    (status "env_error"), so neither ever stops the run.
    """

    def step(self, turn: Turn) -> Observation | Score:
        """React to the model's turn: an Observation continues the episode, a Score ends it.

        The episode's reward (its return, what GRPO's advantage uses) is the final Score's reward plus the rewards
        of the observations before it; its status and `correct` are the final Score's.
        """
        ...


@runtime_checkable
class EpisodeEnvironment(Protocol):
    """The optional multi-turn capability of an `Environment` (tools, feedback, games).

    An environment that has `start_episode` is run as episodes: its problems' messages are the first prompt, each
    model turn goes to `Episode.step`, and `score` is not used for training (keep it meaningful, e.g. a one-turn
    episode, for tools that score single completions). Single-turn environments need none of this.
    """

    def start_episode(self, problem: Problem) -> Episode:
        """A fresh episode for `problem` (one per sample: a GRPO group of G samples starts G episodes)."""
        ...


# --------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ModelSpec:
    """Which model a run trains: a local folder or a hub id, loaded with transformers."""

    path: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tokenizer: str | None = None
    trust_remote_code: bool = False
    max_seq_len: int = 1024

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.path


ComponentKind = Literal["generator", "trainer", "environment"]
KINDS: tuple[ComponentKind, ...] = ("generator", "trainer", "environment")

# Factory signatures, by kind (the factory is named by an import string "module:attr"):
#   generator:   factory(config, *, model: ModelSpec, seed: int) -> Generator
#   trainer:     factory(config, *, model: ModelSpec, seed: int, with_reference: bool) -> Trainer
#                (called in every trainer process; torch.distributed may already be initialised by the
#                cluster layer, with one rank per process)
#   environment: factory(config, *, seed: int) -> Environment
