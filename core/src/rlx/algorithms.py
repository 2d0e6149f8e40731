"""The algorithm registries: advantage estimators, policy losses, loss aggregations and mismatch corrections, by
name. Plugins (builtins too) fill them through the `register_algorithms` hook; a run selects one of each from
`grpo.*` (`select_algorithms`), and the loop calls what was selected without knowing which it is.

Torch-free at import (listing plugins must stay cheap): the option types plugin functions receive live here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rlx.errors import ConfigError, PluginError, did_you_mean
from rlx.registry import PluginInfo

if TYPE_CHECKING:
    import torch

    from rlx.config import GRPOConfig
    from rlx.interfaces import PolicyLossFn

AlgorithmKind = Literal["advantage_estimator", "policy_loss", "loss_aggregation", "mismatch_correction"]
ALGORITHM_KINDS: tuple[AlgorithmKind, ...] = (
    "advantage_estimator", "policy_loss", "loss_aggregation", "mismatch_correction",
)
# the config key that selects each kind (did-you-mean messages name it)
CONFIG_KEYS: dict[AlgorithmKind, str] = {
    "advantage_estimator": "grpo.advantage",
    "policy_loss": "grpo.policy_loss",
    "loss_aggregation": "grpo.loss_agg",
    "mismatch_correction": "grpo.mismatch_correction.kind",
}


# ---------------------------------------------------------------------------------------------- option types


@dataclass(frozen=True)
class AdvantageOptions:
    """What an advantage estimator is called with besides the rewards (`grpo.baseline`, `grpo.normalize_std`).

    Estimator signature: `fn(rewards: (P, G) float32, options: AdvantageOptions) -> (P, G) float32`, row p the G
    completions of prompt p; the rows are the step's whole batch (global statistics may use all of them).
    """

    baseline: Literal["mean", "leave_one_out"] = "mean"
    normalize_std: bool = True
    eps: float = 1e-6


@dataclass(frozen=True)
class ClipRange:
    """What a policy loss is called with: the clip range (`grpo.clip_low`, `grpo.clip_high`) and the dual-clip
    constant (`grpo.dual_clip`, None = off; only losses that say so use it).

    Policy-loss signature: `fn(log_ratio, advantages, mask, clip: ClipRange) -> PolicyLossTerms`, with
    log_ratio (B, T) float32 = log pi_theta - log pi_old (with grad, 0 outside mask), advantages (B, 1) float32,
    mask (B, T) bool. Every row is one whole sequence, so a loss may use per-sequence quantities (GSPO).
    """

    low: float = 0.2
    high: float = 0.2
    dual_clip: float | None = None


@dataclass(frozen=True)
class AggregationOptions:
    """What a loss aggregation is called with besides the mask.

    Aggregation signature: `fn(loss_mask: (B, T) bool, options: AggregationOptions) -> loss_weights (B, T)
    float32`, zero outside the mask, for the B sequences of one mini-batch (one optimizer step): the weights carry
    the whole normalisation, so `sum(per_token_loss * loss_weights)` is exact under any micro-batch/rank split.
    max_completion_tokens: `grpo.max_new_tokens`; sequences_per_mini_batch: `grpo.mini_batch_size` (constants of
    the run, for aggregations that must not depend on the batch, as Dr. GRPO's).
    """

    max_completion_tokens: int
    sequences_per_mini_batch: int


@dataclass(frozen=True)
class MismatchOptions:
    """What a mismatch correction is called with (`grpo.mismatch_correction.cap` and `.lower`).

    Correction signature: `fn(log_ratio: torch.Tensor, options: MismatchOptions) -> weights` of the same shape,
    elementwise: log_ratio = log pi_old - log pi_generator per token (B, T) or summed per sequence (B, 1),
    clamped to +-20; weights >= 0, 0 = masked (the token or sequence carries no policy-gradient loss).
    """

    cap: float = 2.0
    lower: float = 0.5


@dataclass(frozen=True)
class PolicyLossTerms:
    """What a policy loss returns for one micro-batch (B sequences, T positions).

    loss: (B, T) float32 per-token policy-gradient loss, with grad (the caller applies mismatch weights, the KL
    term, the mask and the loss weights). token_flags: name -> (B, T) tensor (bool or float), reported as its
    loss-weighted mean (e.g. `clip_frac`). sequence_flags: name -> (B,) bool, reported as the fraction of the
    mini-batch's sequences (`<name>_seq_frac`).
    """

    loss: torch.Tensor
    token_flags: dict[str, torch.Tensor] = field(default_factory=dict)
    sequence_flags: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AlgorithmSpec:
    """One registered option: its kind, name, function and the plugin that registered it."""

    kind: AlgorithmKind
    name: str
    fn: Callable[..., Any]
    plugin: PluginInfo
    description: str = ""


@dataclass
class AlgorithmCatalog:
    """Every registered option by kind (what `register_algorithms` hooks added), and plugins whose hook failed."""

    entries: dict[AlgorithmKind, dict[str, AlgorithmSpec]] = field(
        default_factory=lambda: {kind: {} for kind in ALGORITHM_KINDS}
    )
    broken: list[PluginInfo] = field(default_factory=list)

    def names(self, kind: AlgorithmKind) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: AlgorithmKind, name: str) -> AlgorithmSpec:
        """The option, or one ConfigError naming the config key, what exists and the closest name."""
        found = self.entries[kind]
        if name in found:
            return found[name]
        msg = (
            f"{CONFIG_KEYS[kind]}: unknown {kind.replace('_', ' ')} '{name}'. "
            f"Available: {', '.join(sorted(found)) or '(none)'}.{did_you_mean(name, found)}"
        )
        if self.broken:
            msg += " Broken plugins (may provide it): " + "; ".join(f"{p.name}: {p.error}" for p in self.broken)
        raise ConfigError(msg)


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


class AlgorithmRegistry:
    """Handed to a `register_algorithms` hook; the plugin calls `add_<kind>(name, fn)` once per option.

    Functions must be module-level (picklable by reference: the policy loss travels to trainer processes) and
    follow their kind's signature (see AdvantageOptions, ClipRange, AggregationOptions, MismatchOptions).
    """

    def __init__(self, plugin: PluginInfo, sink: AlgorithmCatalog) -> None:
        self._plugin = plugin
        self._sink = sink

    def add_advantage_estimator(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """`fn(rewards (P, G), options: AdvantageOptions) -> advantages (P, G)`; selected by `grpo.advantage`."""
        self._add("advantage_estimator", name, fn, description)

    def add_policy_loss(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """`fn(log_ratio (B, T), advantages (B, 1), mask (B, T), clip: ClipRange) -> PolicyLossTerms`;
        selected by `grpo.policy_loss`."""
        self._add("policy_loss", name, fn, description)

    def add_loss_aggregation(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """`fn(loss_mask (B, T), options: AggregationOptions) -> loss_weights (B, T)`; selected by `grpo.loss_agg`."""
        self._add("loss_aggregation", name, fn, description)

    def add_mismatch_correction(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """`fn(log_ratio, options: MismatchOptions) -> weights` (same shape); selected by
        `grpo.mismatch_correction.kind`."""
        self._add("mismatch_correction", name, fn, description)

    def _add(self, kind: AlgorithmKind, name: str, fn: Callable[..., Any], description: str) -> None:
        who = f"plugin '{self._plugin.name}'"
        if not name or not name.isidentifier():
            raise PluginError(f"{who} registered an invalid {kind.replace('_', ' ')} name {name!r} (use a_b_c)")
        if not callable(fn):
            raise PluginError(f"{who}: {kind.replace('_', ' ')} '{name}' must be a function, got {type(fn).__name__}")
        found = self._sink.entries[kind]
        if name in found:
            other = found[name].plugin
            raise PluginError(
                f"two plugins register a {kind.replace('_', ' ')} named '{name}': {other.distribution} "
                f"(plugin '{other.name}') and {self._plugin.distribution} ({who}); uninstall or disable one "
                f"(RLX_DISABLE_PLUGINS={self._plugin.name})"
            )
        found[name] = AlgorithmSpec(kind, name, fn, self._plugin, description or _first_line(fn))


# ---------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Algorithms:
    """The options one run selected (from `grpo.*`), bound to their settings. The loop calls these methods only."""

    advantage: AlgorithmSpec
    policy_loss: AlgorithmSpec
    loss_agg: AlgorithmSpec
    mismatch: AlgorithmSpec
    advantage_options: AdvantageOptions
    clip: ClipRange
    aggregation_options: AggregationOptions
    mismatch_options: MismatchOptions
    mismatch_level: Literal["token", "sequence"]
    kl_coef: float

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """(P, G) rewards of the step's groups -> (P, G) advantages."""
        return self.advantage.fn(rewards, self.advantage_options)

    def loss_weights(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool mask of one mini-batch -> (B, T) float32 loss weights carrying the normalisation."""
        return self.loss_agg.fn(loss_mask, self.aggregation_options)

    def loss_fn(self) -> PolicyLossFn:
        """The picklable PolicyLossFn a trainer calls per micro-batch."""
        from rlx.grpo.losses import policy_loss
        from rlx.grpo.mismatch import mismatch_sums

        # used only where pi_old comes from the training forward (no is_weights from the driver)
        mismatch = None if self.mismatch.name == "none" else functools.partial(
            mismatch_sums, correction=self.mismatch.fn, level=self.mismatch_level, options=self.mismatch_options
        )
        return functools.partial(
            policy_loss, surrogate=self.policy_loss.fn, clip_low=self.clip.low, clip_high=self.clip.high,
            dual_clip=self.clip.dual_clip, kl_coef=self.kl_coef, mismatch=mismatch,
        )

    def mismatch_weights(
        self, old_logprobs: torch.Tensor, generator_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, T) importance weights pi_old / pi_generator (0 outside mask) and their metrics."""
        from rlx.grpo.mismatch import mismatch_weights

        return mismatch_weights(old_logprobs, generator_logprobs, mask, self.mismatch.fn, level=self.mismatch_level,
                                options=self.mismatch_options)

    def describe(self) -> str:
        """One line for `Plan.describe()`."""
        a = self.advantage_options
        adv = self.advantage.name + (f" ({a.baseline}{'+std' if a.normalize_std else ', no std'})"
                                     if self.advantage.name == "grpo" else "")
        dual = f", dual-clip {self.clip.dual_clip}" if self.clip.dual_clip is not None else ""
        corr = self.mismatch.name
        if self.mismatch.name != "none":
            corr += f" ({self.mismatch_level}, cap {self.mismatch_options.cap})"
        return (f"advantage {adv}; policy loss {self.policy_loss.name} (clip {self.clip.low}/{self.clip.high}{dual}); "
                f"loss_agg {self.loss_agg.name}; kl {self.kl_coef}; mismatch correction {corr}")


def select_algorithms(grpo: GRPOConfig, catalog: AlgorithmCatalog | None = None) -> Algorithms:
    """Pick each option `grpo.*` names (a ConfigError with did-you-mean for an unknown one) and bind its settings."""
    if catalog is None:
        from rlx.plugins import algorithm_catalog

        catalog = algorithm_catalog()
    m = grpo.mismatch_correction
    return Algorithms(
        advantage=catalog.get("advantage_estimator", grpo.advantage),
        policy_loss=catalog.get("policy_loss", grpo.policy_loss),
        loss_agg=catalog.get("loss_aggregation", grpo.loss_agg),
        mismatch=catalog.get("mismatch_correction", m.kind),
        advantage_options=AdvantageOptions(baseline=grpo.baseline, normalize_std=grpo.normalize_std),
        clip=ClipRange(low=grpo.clip_low, high=grpo.clip_high, dual_clip=grpo.dual_clip),
        aggregation_options=AggregationOptions(max_completion_tokens=grpo.max_new_tokens,
                                               sequences_per_mini_batch=grpo.mini_batch_size),
        mismatch_options=MismatchOptions(cap=m.cap, lower=m.lower),
        mismatch_level=m.level,
        kl_coef=grpo.kl_coef,
    )
