"""Train/generator mismatch correction: importance weights between the trainer's pi_old and the generator's
log-probabilities (bf16/fp8 engines, other kernels, later stale asynchronous rollouts), per token or per sequence.

The registered corrections (none, tis, mis, icepop) are elementwise maps of the log-ratio to a weight; the level
(token or sequence) and the metrics are shared (`mismatch_weights`). Weights are constants for the whole step
(pi_old and the generator's log-probs do not change while training on it), so they are computed once, on the
driver, and travel in `TrainBatch.is_weights`. Shapes: B sequences, T positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from rlx.algorithms import MismatchOptions

LOG_RATIO_CLAMP = 20.0  # verl's and NeMo-RL's safety bound: weights stay within [exp(-20), exp(20)]

MismatchCorrection = Callable[[torch.Tensor, MismatchOptions], torch.Tensor]


def no_correction(log_ratio: torch.Tensor, options: MismatchOptions) -> torch.Tensor:
    """No correction: w = 1 (the generator's samples are treated as pi_old's, as plain GRPO does)."""
    return torch.ones_like(log_ratio)


def truncated_is(log_ratio: torch.Tensor, options: MismatchOptions) -> torch.Tensor:
    """TIS, truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; verl rollout_is + rollout_is_threshold): w = min(rho, cap), rho = pi_old / pi_gen."""
    return torch.exp(log_ratio).clamp(max=options.cap)


def masked_is(log_ratio: torch.Tensor, options: MismatchOptions) -> torch.Tensor:
    """MIS, masked importance sampling (Liu, Li et al. 2025, "When Speed Kills Stability", Seq-MIS): w = rho if
    rho <= cap else 0: instead of truncating an outlier, drop it (its tokens carry no policy-gradient loss)."""
    rho = torch.exp(log_ratio)
    return torch.where(rho <= options.cap, rho, torch.zeros_like(rho))


def icepop(log_ratio: torch.Tensor, options: MismatchOptions) -> torch.Tensor:
    """IcePop (Ling team 2025, Ring-1T, "Small Leak Can Sink a Great Ship"): two-sided mask,
    w = rho if lower <= rho <= cap else 0 (the paper's alpha = 0.5, beta = 5: `lower`, `cap`)."""
    rho = torch.exp(log_ratio)
    keep = (rho >= options.lower) & (rho <= options.cap)
    return torch.where(keep, rho, torch.zeros_like(rho))


def mismatch_weights(
    old_logprobs: torch.Tensor, generator_logprobs: torch.Tensor, mask: torch.Tensor, correction: MismatchCorrection,
    **level_and_options: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights for the step's batch and their metrics.

    old_logprobs, generator_logprobs: (B, T) log-probs of the same tokens (trainer pi_old, generator); mask: (B, T)
    bool, the tokens that carry loss. level "token": rho_t = exp(old_t - gen_t); "sequence": rho = exp(sum_t(old_t -
    gen_t)) over the sequence's masked tokens, broadcast to them. Log-ratios are clamped to +-20.
    Returns weights (B, T) float32 (0 outside mask) and metrics over the units of the level (tokens or sequences
    with a masked token): mismatch/weight_mean, mismatch/clipped_frac (0 < w != rho), mismatch/masked_frac (w = 0),
    mismatch/ratio_mean (rho before the correction). level_and_options: `mismatch_sums`'s level and options.
    """
    weights, sums = mismatch_sums(old_logprobs, generator_logprobs, mask, correction, **level_and_options)
    return weights, mismatch_means({name: float(value) for name, value in sums.items()})


def mismatch_sums(
    old_logprobs: torch.Tensor,
    generator_logprobs: torch.Tensor,
    mask: torch.Tensor,
    correction: MismatchCorrection,
    *,
    level: Literal["token", "sequence"],
    options: MismatchOptions,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`mismatch_weights` with its metrics as sums over the units (tensors: "units", "weight", "clipped", "masked",
    "ratio"), which add up across micro-batches; `mismatch_means` turns them into the metrics."""
    m = mask.bool()
    log_ratio = torch.where(m, old_logprobs.float() - generator_logprobs.float(), torch.zeros((), dtype=torch.float32,
                                                                                             device=m.device))  # fmt: skip
    if level == "sequence":
        units = m.any(dim=1, keepdim=True)  # (B, 1)
        log_ratio = log_ratio.sum(dim=1, keepdim=True)  # (B, 1)
    else:
        units = m
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    weights = correction(log_ratio, options).float()  # (B, T) or (B, 1)
    rho = torch.exp(log_ratio)
    u = units.expand_as(weights)
    w, r = weights.double(), rho.double()
    sums = {
        "units": u.sum().double(),
        "weight": torch.where(u, w, 0.0).sum(),
        "clipped": (u & (w > 0) & ~torch.isclose(w, r, rtol=1e-6, atol=0.0)).sum().double(),
        "masked": (u & (w == 0)).sum().double(),
        "ratio": torch.where(u, r, 0.0).sum(),
    }
    full = torch.where(m, weights.expand_as(m), torch.zeros((), dtype=torch.float32, device=m.device))
    return full, sums


def mismatch_means(sums: dict[str, float]) -> dict[str, float]:
    """`mismatch_sums` -> mismatch/weight_mean, clipped_frac, masked_frac, ratio_mean ({} without units)."""
    units = sums.get("units", 0.0)
    if not units:
        return {}
    return {
        "mismatch/weight_mean": sums["weight"] / units,
        "mismatch/clipped_frac": sums["clipped"] / units,
        "mismatch/masked_frac": sums["masked"] / units,
        "mismatch/ratio_mean": sums["ratio"] / units,
    }
