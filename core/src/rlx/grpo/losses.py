"""The GRPO policy loss (clipped surrogate, optional dual clip and k3 KL) and the registered loss aggregations.

An aggregation turns a completion mask into per-token loss weights that carry the global normalisation, so
`sum(per_token_loss * loss_weights)` gives the same gradient for any split into micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlx.interfaces import TrainBatch

LossAggregation = Callable[[torch.Tensor], torch.Tensor]
"""completion_mask (B, T) bool -> loss_weights (B, T) float32, zero outside the mask."""

LOSS_AGGREGATIONS: dict[str, LossAggregation] = {}

# exp() of a log-ratio beyond this overflows float32 soon after; verl and NeMo-RL clamp at the same value
LOG_RATIO_CLAMP = 20.0


def register_loss_aggregation(name: str) -> Callable[[LossAggregation], LossAggregation]:
    """Decorator: register `fn(completion_mask) -> loss_weights` under `name` (a clash is an error)."""

    def decorate(fn: LossAggregation) -> LossAggregation:
        if name in LOSS_AGGREGATIONS:
            raise ValueError(f"loss aggregation '{name}' is already registered ({LOSS_AGGREGATIONS[name]!r})")
        LOSS_AGGREGATIONS[name] = fn
        return fn

    return decorate


@register_loss_aggregation("token")
def token_mean_weights(completion_mask: torch.Tensor) -> torch.Tensor:
    """Every valid token of the batch counts the same: mask / (valid tokens in the whole batch).

    completion_mask: (B, T) bool -> (B, T) float32 summing to 1 (all zeros if no token is valid).
    Long completions weigh more in total (DAPO's token-level loss).
    """
    mask = completion_mask.to(torch.float32)
    return mask / mask.sum().clamp(min=1.0)


@register_loss_aggregation("sequence")
def sequence_mean_weights(completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, then mean over sequences: mask[b] / (len_b * B).

    completion_mask: (B, T) bool -> (B, T) float32. B counts only sequences with at least one valid token,
    so the weights sum to 1 (an empty completion has nothing to learn from and would only shrink the loss).
    This is the original GRPO (DeepSeekMath) normalisation.
    """
    mask = completion_mask.to(torch.float32)
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    num_sequences = (lengths > 0).sum().clamp(min=1)
    return mask / (lengths.clamp(min=1.0) * num_sequences)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman, "Approximating KL divergence", 2020).

    With d = ref - logp: kl = exp(d) - d - 1, >= 0 and unbiased for tokens sampled from pi.
    logprobs, ref_logprobs: (B, T) -> (B, T), in float32. d is clamped to +-20 so exp() stays finite.
    """
    d = (ref_logprobs.float() - logprobs.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def _require(batch: TrainBatch, name: str, why: str) -> torch.Tensor:
    value = getattr(batch, name)
    if value is None:
        raise ValueError(f"policy_loss needs batch.{name} ({why}), but it is None")
    return value


def policy_loss(
    new_logprobs: torch.Tensor,
    batch: TrainBatch,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one (micro-)batch: a `PolicyLossFn` (bind the options with functools.partial).

    new_logprobs: (B, T) log-probabilities of `batch.input_ids` under the policy being trained (with grad).
    Uses batch.old_logprobs (B, T), batch.advantages (B,) broadcast over tokens, batch.loss_weights (B, T),
    batch.completion_mask (B, T) and, when kl_coef > 0, batch.ref_logprobs (B, T).

    Per token: ratio = exp(new - old) (log-ratio clamped to +-20),
        pg = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))      (PPO clipped surrogate)
        if dual_clip = c and A < 0: pg = min(pg, -c * A)                          (Ye et al. 2020, as verl)
        loss_t = pg + kl_coef * kl_k3(new, ref)                                   (KL term only if kl_coef > 0)
    Returns (sum_t(loss_t * w_t), metrics): a scalar and metric scalars that are likewise sums weighted by
    loss_weights (no grad), so both add up exactly across micro-batches and ranks. Computed in float32
    whatever the dtype of the inputs. Positions outside completion_mask contribute nothing (not even NaN).

    Metrics: pg_loss, kl (only with the KL term), ratio_mean, clip_frac (the clipped branch is active, so the
    token gives no gradient), clip_frac_low (A < 0, ratio < 1 - clip_low), clip_frac_high (A > 0,
    ratio > 1 + clip_high), dual_clip_frac (only with dual_clip), advantage_mean.
    """
    old = _require(batch, "old_logprobs", "pi_old log-probabilities")
    adv = _require(batch, "advantages", "one advantage per sequence")
    weights = _require(batch, "loss_weights", "from a registered loss aggregation").float()
    mask = batch.completion_mask.bool()
    if new_logprobs.shape != old.shape or weights.shape != old.shape or mask.shape != old.shape:
        raise ValueError(
            f"policy_loss: new_logprobs {tuple(new_logprobs.shape)}, old_logprobs {tuple(old.shape)}, "
            f"loss_weights {tuple(weights.shape)} and completion_mask {tuple(mask.shape)} must all be (B, T)"
        )
    if adv.shape != old.shape[:1]:
        raise ValueError(f"policy_loss: advantages must be (B,) = {tuple(old.shape[:1])}, got {tuple(adv.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")

    zero = torch.zeros((), dtype=torch.float32, device=new_logprobs.device)
    new = new_logprobs.float()  # (B, T)
    old = old.float()  # (B, T)
    a = adv.float().unsqueeze(1)  # (B, 1)

    ratio = torch.exp((new - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (B, T)
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(unclipped, clipped)  # (B, T)
    metrics_t: dict[str, torch.Tensor] = {}
    if dual_clip is not None:
        bound = -a * dual_clip  # (B, 1), positive where A < 0
        dual_active = (a < 0) & (pg > bound)
        pg = torch.where(a < 0, torch.minimum(pg, bound), pg)
        metrics_t["dual_clip_frac"] = dual_active
    loss_t = pg
    if kl_coef > 0:
        ref = _require(batch, "ref_logprobs", f"the KL term is on, kl_coef={kl_coef}")
        kl = kl_k3(new, ref)  # (B, T)
        loss_t = loss_t + kl_coef * kl
        metrics_t["kl"] = kl

    # where(), not multiplication: NaN * 0 is NaN, so padding garbage (NaN/inf log-probs) must be selected
    # away; the +-20 clamps give those positions a zero gradient as well
    loss = (torch.where(mask, loss_t, zero) * weights).sum()

    with torch.no_grad():
        metrics_t["pg_loss"] = pg
        metrics_t["ratio_mean"] = ratio
        metrics_t["clip_frac"] = clipped > unclipped
        metrics_t["clip_frac_low"] = (a < 0) & (ratio < 1.0 - clip_low)
        metrics_t["clip_frac_high"] = (a > 0) & (ratio > 1.0 + clip_high)
        metrics_t["advantage_mean"] = a.expand_as(ratio)
        metrics = {
            name: (torch.where(mask, value.detach().float(), zero) * weights).sum() for name, value in metrics_t.items()
        }
    return loss, metrics
