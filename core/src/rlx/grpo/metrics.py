"""Rollout and evaluation metrics: reward/advantage/length statistics, train-vs-generator log-prob mismatch,
per-token entropy from logits, and the unbiased pass@k estimator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    x = x.double().flatten()
    if x.numel() == 0:
        return {}
    return {
        f"{prefix}/mean": float(x.mean()),
        # unbiased std; one value has no spread
        f"{prefix}/std": float(x.std()) if x.numel() > 1 else 0.0,
        f"{prefix}/min": float(x.min()),
        f"{prefix}/max": float(x.max()),
    }


def rollout_metrics(
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    response_lengths: torch.Tensor,
    *,
    truncated: torch.Tensor | Sequence[bool] | None = None,
) -> dict[str, float]:
    """Statistics of one step's rollouts.

    rewards: (P, G) of every group drawn; advantages: (P', G) of the groups trained on (P' < P when dynamic sampling
    dropped some; may be empty); response_lengths: (P*G,) completion tokens of the drawn samples; truncated: (P*G,)
    bool, True where the completion hit the token limit (finish_reason "length"), optional.
    Keys: reward/{mean,std,min,max}, reward/zero_variance_groups (fraction of the P groups whose G rewards are
    all equal: they get zero advantage and no gradient), advantage/{mean,std,min,max},
    response_length/{mean,std,min,max}, response_length/truncated_frac (only with `truncated`).
    Stds are unbiased, over all P*G values.
    """
    if rewards.dim() != 2 or advantages.dim() != 2 or (advantages.numel() and advantages.shape[1] != rewards.shape[1]):
        raise ValueError(
            f"rewards and advantages must be (P, G) and (P', G), got {tuple(rewards.shape)} and "
            f"{tuple(advantages.shape)}"
        )
    if response_lengths.numel() != rewards.numel():
        raise ValueError(f"response_lengths must hold P*G = {rewards.numel()} values, got {response_lengths.numel()}")
    out = _stats("reward", rewards)
    constant = rewards.amax(dim=1) == rewards.amin(dim=1)  # (P,)
    out["reward/zero_variance_groups"] = float(constant.double().mean()) if constant.numel() else 0.0
    out.update(_stats("advantage", advantages))
    out.update(_stats("response_length", response_lengths))
    if truncated is not None:
        flags = torch.as_tensor(truncated, dtype=torch.bool).flatten()
        if flags.numel() != rewards.numel():
            raise ValueError(f"truncated must hold P*G = {rewards.numel()} flags, got {flags.numel()}")
        out["response_length/truncated_frac"] = float(flags.double().mean()) if flags.numel() else 0.0
    return out


def sequence_fractions(metrics: dict[str, float], num_sequences: int) -> dict[str, float]:
    """A trainer's summed loss metrics with each `<name>_seqs` count (sequences with a flag, from `policy_loss`)
    turned into `<name>_seq_frac`, the fraction of the mini-batch's `num_sequences` sequences that carry loss."""
    out = {}
    for key, value in metrics.items():
        if key.endswith("_seqs"):
            out[key[: -len("_seqs")] + "_seq_frac"] = value / num_sequences if num_sequences else 0.0
        else:
            out[key] = value
    return out


def logprob_mismatch(gen_logprobs: torch.Tensor, train_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over valid tokens of exp(|gen - train|): 1.0 when generator and trainer agree exactly.

    gen_logprobs, train_logprobs: (B, T) per-token log-probabilities of the same tokens; mask: (B, T) bool.
    Returns 1.0 when no token is valid (nothing disagrees).
    """
    m = mask.bool()
    if not bool(m.any()):
        return 1.0
    diff = (gen_logprobs.double() - train_logprobs.double()).abs()[m]
    return float(torch.exp(diff).mean())


def entropy_from_logits(
    logits: torch.Tensor, *, mask: torch.Tensor | None = None, chunk_size: int = 1024
) -> torch.Tensor:
    """Per-token entropy H = logsumexp(z) - sum(softmax(z) * z) of the next-token distribution.

    logits: (B, T, V) any float dtype; mask: (B, T) bool, optional (entropy is 0 outside it).
    Returns (B, T) float32. Works through `chunk_size` tokens at a time in float32, so the float32 copy of
    the logits never exceeds chunk_size x V values.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    b, t, v = logits.shape
    flat = logits.reshape(b * t, v)
    pieces = []
    for start in range(0, b * t, chunk_size):
        z = flat[start : start + chunk_size].float()  # (C, V)
        p = torch.softmax(z, dim=-1)
        # where(): 0 * -inf (a masked-out vocabulary entry) must count as 0, not NaN
        pz = torch.where(p > 0, p * z, torch.zeros_like(z))
        pieces.append(torch.logsumexp(z, dim=-1) - pz.sum(dim=-1))
    ent = torch.cat(pieces).view(b, t) if pieces else flat.new_zeros((b, t), dtype=torch.float32)
    if mask is not None:
        ent = torch.where(mask.bool(), ent, torch.zeros_like(ent))
    return ent


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): P(at least one of k draws without replacement from n samples,
    c of them correct, is correct) = 1 - C(n-c, k) / C(n, k), computed as a product to avoid huge binomials.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail
