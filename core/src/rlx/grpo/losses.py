"""The GRPO loss: registered loss aggregations (token, sequence, dr_grpo), registered policy losses (ppo_clip, gspo,
gspo_token, cispo), the k3 KL term, and `policy_loss`, the PolicyLossFn that puts them together.

An aggregation turns a loss mask into per-token loss weights that carry the global normalisation, so
`sum(per_token_loss * loss_weights)` gives the same gradient for any split into micro-batches and ranks.
Shapes: B = sequences, T = positions (prompt + completion, right-padded).
"""

from __future__ import annotations

import torch

from rlx.algorithms import AggregationOptions, ClipRange, PolicyLossTerms
from rlx.interfaces import TrainBatch

# exp() of a log-ratio beyond this overflows float32 soon after; verl and NeMo-RL clamp at the same value
LOG_RATIO_CLAMP = 20.0


# ---------------------------------------------------------------------------------------------- aggregations


#: metrics of `grpo_loss` when pi_old comes from the training forward: sum over tokens of exp|new - generator|,
#: and the number of tokens (the loop divides them into `logprob_mismatch`)
MISMATCH_SUM = "gen_mismatch_sum"
MISMATCH_TOKENS = "gen_mismatch_tokens"
#: ... and, with a mismatch correction, `rlx.grpo.mismatch.mismatch_sums`'s sums under this prefix
MISMATCH_PREFIX = "is_sum_"

def token_mean_weights(loss_mask: torch.Tensor, options: AggregationOptions) -> torch.Tensor:
    """Token mean (DAPO, Yu et al. 2025, arXiv 2503.14476): w = mask / (valid tokens in the mini-batch).

    loss_mask: (B, T) bool -> (B, T) float32 summing to 1 (all zeros if no token is valid). Every token counts the
    same, so long completions weigh more in total. verl: loss_agg_mode=token-mean; NeMo-RL: token_level_loss=true.
    """
    mask = loss_mask.to(torch.float32)
    return mask / mask.sum().clamp(min=1.0)


def sequence_mean_weights(loss_mask: torch.Tensor, options: AggregationOptions) -> torch.Tensor:
    """Sequence mean (GRPO, DeepSeekMath): mean over each sequence's tokens, then over sequences:
    w[b] = mask[b] / (len_b * B).

    loss_mask: (B, T) bool -> (B, T) float32. B counts only sequences with at least one valid token, so the weights
    sum to 1 (an empty completion has nothing to learn from and would only shrink the loss).
    verl: seq-mean-token-mean; NeMo-RL: token_level_loss=false.
    """
    mask = loss_mask.to(torch.float32)
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    num_sequences = (lengths > 0).sum().clamp(min=1)
    return mask / (lengths.clamp(min=1.0) * num_sequences)


def dr_grpo_weights(loss_mask: torch.Tensor, options: AggregationOptions) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): sum over each sequence's tokens divided by a constant, the
    maximum completion length, then the mean over the mini-batch: w = mask / (mini_batch_size * max_new_tokens).

    loss_mask: (B, T) bool -> (B, T) float32. Both divisors are run constants (`grpo.mini_batch_size`,
    `grpo.max_new_tokens`), so no sequence's weight depends on the lengths of the others: no length bias.
    As TRL's loss_type="dr_grpo"; verl's seq-mean-token-sum-norm divides by the constant only.
    """
    scale = float(options.sequences_per_mini_batch * options.max_completion_tokens)
    return loss_mask.to(torch.float32) / scale


# ---------------------------------------------------------------------------------------------- policy losses


def _clip_flags(clipped_branch: torch.Tensor, ratio: torch.Tensor, a: torch.Tensor, clip: ClipRange,
                mask: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    token = {
        "clip_frac": clipped_branch.expand_as(mask),
        "clip_frac_low": ((a < 0) & (ratio < 1.0 - clip.low)).expand_as(mask),
        "clip_frac_high": ((a > 0) & (ratio > 1.0 + clip.high)).expand_as(mask),
    }
    return token, {"clip": (token["clip_frac"] & mask).any(dim=1)}


def ppo_clip(log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipRange) -> PolicyLossTerms:
    """PPO clipped surrogate per token (Schulman et al. 2017; GRPO; DAPO's clip-higher with clip.high > clip.low):

        r_t = exp(log_ratio_t),  loss_t = max(-A r_t, -A clip(r_t, 1 - low, 1 + high))
        with dual clip c (Ye et al. 2020, as verl/NeMo-RL) and A < 0: loss_t = min(loss_t, -c A)

    log_ratio (B, T), advantages (B, 1), mask (B, T) bool. Flags: clip_frac (the clipped branch is active: no
    gradient), clip_frac_low (A < 0, r < 1 - low), clip_frac_high (A > 0, r > 1 + high), dual_clip_frac (only
    with dual clip); sequence flag `clip`: some token of the sequence is clipped.
    """
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip.low, 1.0 + clip.high)
    pg = torch.maximum(unclipped, clipped)  # (B, T)
    token, sequence = _clip_flags(clipped > unclipped, ratio, advantages, clip, mask)
    if clip.dual_clip is not None:
        bound = -advantages * clip.dual_clip  # (B, 1), positive where A < 0
        token["dual_clip_frac"] = (advantages < 0) & (pg > bound)
        pg = torch.where(advantages < 0, torch.minimum(pg, bound), pg)
    return PolicyLossTerms(pg, token, sequence)


def _sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, 1): mean of the token log-ratios over each sequence's valid tokens (0 for an empty one)."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(mask, log_ratio, torch.zeros_like(log_ratio)).sum(dim=1, keepdim=True) / lengths
    return mean.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def gspo(log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipRange) -> PolicyLossTerms:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): one importance ratio per sequence, the geometric mean of its
    token ratios, clipped per sequence:

        s_i = exp(mean_t log_ratio_i,t),  loss_i = max(-A_i s_i, -A_i clip(s_i, 1 - low, 1 + high))

    every token of sequence i carries loss_i (so `grpo.loss_agg=sequence` gives the paper's 1/G sum over
    sequences). Needs whole sequences in a micro-batch. The paper's clip range is tiny: clip_low=3e-4,
    clip_high=4e-4. log_ratio (B, T), advantages (B, 1), mask (B, T). Dual clip is not used.
    Flags: clip_frac/clip_frac_low/clip_frac_high of the sequence ratio (on its tokens); sequence flag `clip`.
    """
    s = torch.exp(_sequence_log_ratio(log_ratio, mask))  # (B, 1)
    unclipped = -advantages * s
    clipped = -advantages * s.clamp(1.0 - clip.low, 1.0 + clip.high)
    loss = torch.maximum(unclipped, clipped)  # (B, 1)
    token, sequence = _clip_flags(clipped > unclipped, s, advantages, clip, mask)
    return PolicyLossTerms(loss.expand_as(log_ratio), token, sequence)


def gspo_token(log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
               clip: ClipRange) -> PolicyLossTerms:
    """GSPO-token (Zheng et al. 2025, arXiv 2507.18071, eq. 13): per-token ratios whose value is the sequence's
    geometric-mean ratio and whose gradient is the token's own:

        s_i,t = sg(s_i) * pi_theta(y_t) / sg(pi_theta(y_t)),  loss_t = max(-A_i,t s_i,t, -A_i,t clip(s_i,t, ...))

    It exists for per-token advantages; with one advantage per sequence (rlx today) its values and gradients equal
    `gspo`'s for every aggregation (tested). Needs whole sequences in a micro-batch. Flags as `gspo`.
    """
    seq = _sequence_log_ratio(log_ratio, mask).detach()  # (B, 1)
    s = torch.exp(seq + log_ratio - log_ratio.detach())  # (B, T): value s_i, gradient of the token's log-prob
    unclipped = -advantages * s
    clipped = -advantages * s.clamp(1.0 - clip.low, 1.0 + clip.high)
    token, sequence = _clip_flags(clipped > unclipped, s, advantages, clip, mask)
    return PolicyLossTerms(torch.maximum(unclipped, clipped), token, sequence)


def cispo(log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipRange) -> PolicyLossTerms:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance-sampling weight, not the update; every token keeps
    its gradient:

        w_t = sg(clip(r_t, 1 - low, 1 + high)),  loss_t = -w_t A log pi_theta(y_t)   (gradient -w_t A grad log pi)

    computed as -A w_t (log_ratio - sg(log_ratio) + 1), whose value -A w_t is comparable to ppo_clip's. MiniMax-M1
    leaves the lower bound off: set clip_low >= 1. Flags: clip_frac (the weight was truncated), clip_frac_low,
    clip_frac_high (r below/above the range, whatever the sign of A); sequence flag `clip`.
    """
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (B, T)
    weight = ratio.clamp(1.0 - clip.low, 1.0 + clip.high).detach()
    loss = -advantages * weight * (log_ratio - log_ratio.detach() + 1.0)
    low, high = ratio < 1.0 - clip.low, ratio > 1.0 + clip.high
    token = {"clip_frac": low | high, "clip_frac_low": low, "clip_frac_high": high}
    return PolicyLossTerms(loss, token, {"clip": (token["clip_frac"] & mask).any(dim=1)})


# ---------------------------------------------------------------------------------------------- the loss


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
    surrogate=ppo_clip,  # noqa: ANN001 - a registered policy loss (rlx.algorithms.ClipRange has its signature)
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    mismatch=None,  # noqa: ANN001 - mismatch_sums with its correction bound (functools.partial), or None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one (micro-)batch: a `PolicyLossFn` (bind the options with functools.partial).

    new_logprobs: (B, T) log-probabilities of `batch.input_ids` under the policy being trained (with grad).
    Uses batch.old_logprobs (B, T) (None: the detached new_logprobs, i.e. this forward's policy is pi_old; the
    metrics then add MISMATCH_SUM / MISMATCH_TOKENS against batch.generator_logprobs and, with `mismatch`, the
    correction's weights are computed here from this forward, their sums under MISMATCH_PREFIX), batch.advantages (B,) broadcast over tokens, batch.loss_weights (B, T),
    batch.completion_mask (B, T), batch.is_weights (B, T) when set (mismatch correction, no grad) and, when
    kl_coef > 0, batch.ref_logprobs (B, T). Rows must be whole sequences (`surrogate` may use per-sequence sums).

    Per token: log_ratio = new - old; pg_t = surrogate(...).loss_t (ppo_clip: the PPO clipped surrogate);
        loss_t = is_weight_t * pg_t + kl_coef * kl_k3(new, ref)                  (KL term only if kl_coef > 0)
    Returns (sum_t(loss_t * w_t), metrics). Metrics are sums weighted by loss_weights (no grad), so they add up
    exactly across micro-batches and ranks like the loss: pg_loss, kl (with the KL term), ratio_mean (token ratio),
    advantage_mean, is_weight_mean (with is_weights) and the surrogate's token flags (clip_frac ...); and, for each
    sequence flag, `<name>_seqs`: a count of sequences with loss weight (the loop divides by the mini-batch's).
    Computed in float32 whatever the dtype of the inputs. Positions outside completion_mask contribute nothing.
    """
    # No old_logprobs: pi_old is the policy of this very forward (one optimizer step per GRPO step), ratio 1.
    old = batch.old_logprobs if batch.old_logprobs is not None else new_logprobs.detach()
    adv = _require(batch, "advantages", "one advantage per sequence")
    weights = _require(batch, "loss_weights", "from a registered loss aggregation").float()
    mask = batch.completion_mask.bool()
    is_weights = batch.is_weights
    mismatch_metrics: dict[str, torch.Tensor] = {}
    if is_weights is None and batch.old_logprobs is None and mismatch is not None:
        # pi_old is this forward: the mismatch weights pi_old / pi_generator come from it (constants, no grad)
        gen = _require(batch, "generator_logprobs", "the mismatch correction's pi_generator")
        carries = batch.completion_mask.bool() & (batch.loss_weights > 0)
        is_weights, sums = mismatch(new_logprobs.detach(), gen, carries)
        mismatch_metrics = {MISMATCH_PREFIX + name: value.float() for name, value in sums.items()}
    shapes = [new_logprobs.shape, weights.shape, mask.shape] + ([is_weights.shape] if is_weights is not None else [])
    if any(shape != old.shape for shape in shapes):
        raise ValueError(
            f"policy_loss: new_logprobs {tuple(new_logprobs.shape)}, old_logprobs {tuple(old.shape)}, "
            f"loss_weights {tuple(weights.shape)}, completion_mask {tuple(mask.shape)} and is_weights "
            f"{None if is_weights is None else tuple(is_weights.shape)} must all be (B, T)"
        )
    if adv.shape != old.shape[:1]:
        raise ValueError(f"policy_loss: advantages must be (B,) = {tuple(old.shape[:1])}, got {tuple(adv.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")

    zero = torch.zeros((), dtype=torch.float32, device=new_logprobs.device)
    # where(), not multiplication: NaN * 0 is NaN, so padding garbage (NaN/inf log-probs) must be selected away;
    # where() also gives those positions a zero gradient
    log_ratio = torch.where(mask, new_logprobs.float() - old.float(), zero)  # (B, T)
    a = adv.float().unsqueeze(1)  # (B, 1)
    terms = surrogate(log_ratio, a, mask, ClipRange(low=clip_low, high=clip_high, dual_clip=dual_clip))
    pg = terms.loss if is_weights is None else terms.loss * is_weights.float()  # (B, T)
    metrics_t: dict[str, torch.Tensor] = dict(terms.token_flags)
    loss_t = pg
    if kl_coef > 0:
        ref = _require(batch, "ref_logprobs", f"the KL term is on, kl_coef={kl_coef}")
        kl = kl_k3(torch.where(mask, new_logprobs.float(), zero), torch.where(mask, ref.float(), zero))  # (B, T)
        loss_t = loss_t + kl_coef * kl
        metrics_t["kl"] = kl
    loss = (torch.where(mask, loss_t, zero) * weights).sum()

    with torch.no_grad():
        metrics_t["pg_loss"] = pg
        metrics_t["ratio_mean"] = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        metrics_t["advantage_mean"] = a.expand_as(log_ratio)
        if is_weights is not None:
            metrics_t["is_weight_mean"] = is_weights
        metrics = {
            name: (torch.where(mask, value.detach().float(), zero) * weights).sum() for name, value in metrics_t.items()
        }
        if batch.old_logprobs is None and batch.generator_logprobs is not None:
            # logprob_mismatch without a log-probs pass: sum of exp|new - generator| and the token count
            gen_diff = torch.where(mask, new_logprobs.detach().float() - batch.generator_logprobs.float(), zero)
            metrics[MISMATCH_SUM] = torch.where(mask, torch.exp(gen_diff.abs()), zero).sum()
            metrics[MISMATCH_TOKENS] = mask.sum().to(torch.float32)
        metrics.update(mismatch_metrics)
        # sequences that carry loss (padding rows a trainer adds have zero loss weights)
        live = (weights > 0).any(dim=1) & mask.any(dim=1)  # (B,)
        for name, flags in terms.sequence_flags.items():
            metrics[f"{name}_seqs"] = (flags.bool() & live).sum().to(torch.float32)
    return loss, metrics
