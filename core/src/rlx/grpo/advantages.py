"""Advantage estimators: one advantage per completion from the rewards of its group (and, for REINFORCE++, of
the whole batch). `group_advantages` is the shared kernel; `grpo`, `rloo` and `reinforce_pp` are the registered
estimators (signature in `rlx.algorithms.AdvantageOptions`).

Shapes: P = prompts, G = completions per prompt (the group). One advantage per completion.
"""

from __future__ import annotations

from typing import Literal

import torch

from rlx.algorithms import AdvantageOptions

Baseline = Literal["mean", "leave_one_out"]
BASELINES: tuple[Baseline, ...] = ("mean", "leave_one_out")


def group_advantages(
    rewards: torch.Tensor,
    *,
    baseline: Baseline = "mean",
    normalize_std: bool = True,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """Advantages of each completion relative to its group.

    rewards: (P, G) float, row p holds the G rewards of prompt p; or (P*G,) prompt-major with `group_size=G`.
    Returns a tensor of the same shape (float32, or the input's floating dtype).

    baseline="mean" (DeepSeekMath GRPO, TRL, verl): A_i = r_i - mean(r); with `normalize_std`,
    A_i = (r_i - mean(r)) / (std(r) + eps), std = the *unbiased* (Bessel-corrected, divide by G-1) std of the
    group, as `torch.std` in TRL/verl.

    baseline="leave_one_out" (RLOO; NeMo-RL's `use_leave_one_out_baseline`): A_i = r_i - mean(r_j, j != i);
    with `normalize_std` divide by (std_loo_i + eps), std_loo_i = the unbiased std of the G-1 *other* rewards,
    as NeMo-RL's `calculate_baseline_and_std_per_prompt` + `normalize_advantages_with_epsilon`. Like NeMo-RL,
    where that std is zero (the others are all equal, or there is a single other, G=2) the advantage is left
    unnormalised rather than divided by eps. Differences from NeMo-RL: groups are the rows of `rewards`
    (NeMo-RL groups equal prompt token ids) and there is no per-sample valid mask; statistics are computed
    two-pass in float64 (NeMo-RL uses E[r^2] - E[r]^2); and a constant group is set to exactly zero.

    Either baseline: a group whose rewards are all equal (including G=1) gets exactly 0 advantage, never NaN/inf.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline '{baseline}' is not one of {list(BASELINES)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    flat = rewards.dim() == 1
    if flat:
        if group_size is None or group_size <= 0 or rewards.numel() % group_size:
            raise ValueError(
                f"a flat rewards tensor of {rewards.numel()} values needs group_size dividing it, got {group_size}"
            )
        grouped = rewards.view(-1, group_size)
    elif rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"group_size={group_size} disagrees with rewards of shape {tuple(rewards.shape)}")
        grouped = rewards
    else:
        raise ValueError(f"rewards must be (P, G) or (P*G,), got shape {tuple(rewards.shape)}")

    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    # float64 so that small reward differences survive the subtraction and the std of near-equal values
    r = grouped.to(torch.float64)  # (P, G)
    _, g = r.shape
    if g == 1 or (baseline == "leave_one_out" and g < 2):
        return torch.zeros_like(rewards, dtype=out_dtype)

    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # (P, 1)
    if baseline == "mean":
        base = r.mean(dim=1, keepdim=True)  # (P, 1)
        std = r.std(dim=1, keepdim=True).expand_as(r)  # (P, G), unbiased
        others_constant = constant.expand_as(r)
    else:
        others = ~torch.eye(g, dtype=torch.bool, device=r.device)  # (G, G): others[i, j] = j != i
        base = (r.sum(dim=1, keepdim=True) - r) / (g - 1)  # (P, G)
        if g > 2:
            dev = (r.unsqueeze(1) - base.unsqueeze(2)) * others  # (P, G, G): r_j - base_i over j != i
            std = (dev.square().sum(dim=2) / (g - 2)).sqrt()  # (P, G)
        else:
            std = torch.zeros_like(r)  # the std of a single value is undefined: leave unnormalised
        # exact equality test: rounding makes the std of equal values tiny but nonzero, and dividing an O(1)
        # difference by that would blow up
        inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
        hi = torch.where(others, r.unsqueeze(1), -inf).amax(dim=2)  # (P, G)
        lo = torch.where(others, r.unsqueeze(1), inf).amin(dim=2)  # (P, G)
        others_constant = hi == lo

    adv = r - base  # (P, G)
    if normalize_std:
        std = torch.where(others_constant, torch.zeros_like(std), std)
        adv = torch.where(std > 0, adv / (std + eps), adv)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.to(out_dtype).view(rewards.shape)


# ---------------------------------------------------------------------------------------------- registered estimators


def grpo_advantages(rewards: torch.Tensor, options: AdvantageOptions) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): A_i = (r_i - mean(r)) / (std(r) + eps) in the group.

    rewards (P, G) -> (P, G). `options.baseline` "mean" or "leave_one_out" (NeMo-RL's use_leave_one_out_baseline),
    `options.normalize_std` False is Dr. GRPO's "no std" (Liu et al. 2025, arXiv 2503.20783): A_i = r_i - mean(r).
    A group whose rewards all agree gets exactly 0. See `group_advantages`.
    """
    return group_advantages(rewards, baseline=options.baseline, normalize_std=options.normalize_std, eps=options.eps)


def rloo_advantages(rewards: torch.Tensor, options: AdvantageOptions) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = r_i - mean_{j != i}(r_j) = G/(G-1) (r_i - mean(r)).

    rewards (P, G) -> (P, G). No std normalisation (by definition: `options` is not used). G = 1 or a group of
    equal rewards gives 0.
    """
    return group_advantages(rewards, baseline="leave_one_out", normalize_std=False)


def reinforce_pp_advantages(rewards: torch.Tensor, options: AdvantageOptions) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025, arXiv 2501.03262): global batch normalisation instead of per-group std.

    rewards (P, G) -> (P, G). With G > 1 (the paper's "REINFORCE++ w/ baseline", for group sampling):
    A~_i = r_i - mean_group(r), then A_i = (A~_i - mean_batch(A~)) / (std_batch(A~) + eps), mean and unbiased std
    over all P*G values of the batch. With G = 1 (plain REINFORCE++): A~_i = r_i. If the batch has no spread the
    advantages are 0. Differences from OpenRLHF/verl: statistics are per sequence (they whiten over tokens, so long
    completions weigh more) and the KL term stays in the loss (`grpo.kl_coef`), not in the reward.
    """
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.to(torch.float64)  # (P, G)
    centred = r - r.mean(dim=1, keepdim=True) if r.shape[1] > 1 else r
    # exact zero for a group of equal rewards (the mean of equal floats can differ from them by rounding)
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    if r.shape[1] > 1:
        centred = torch.where(constant, torch.zeros_like(centred), centred)
    flat = centred.flatten()
    if flat.numel() < 2 or bool((flat == flat[0]).all()):
        return torch.zeros_like(rewards, dtype=out_dtype)
    adv = (centred - flat.mean()) / (flat.std() + options.eps)
    return adv.to(out_dtype)
