"""Reward-side pieces of DAPO (Yu et al. 2025, arXiv 2503.14476): the soft overlong penalty (reward shaping) and the
dynamic-sampling test of whether a group can teach anything. Pure functions over Python numbers."""

from __future__ import annotations

from collections.abc import Sequence


def overlong_penalty(length: int, max_length: int, buffer_tokens: int, penalty: float) -> float:
    """DAPO's soft overlong punishment (eq. 13), scaled by `penalty` (the paper: 1):

        0                                     if L <= L_max - L_cache
        penalty * ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        -penalty                              if L > L_max

    length L: completion tokens; max_length L_max: the step's completion token limit; buffer_tokens L_cache (0 =
    off). Added to the environment's reward. verl: reward_model.overlong_buffer.{len,penalty_factor};
    NeMo-RL: grpo.reward_shaping.{overlong_buffer_length,overlong_buffer_penalty}.
    """
    if buffer_tokens <= 0 or penalty == 0:
        return 0.0
    start = max_length - buffer_tokens
    if length <= start:
        return 0.0
    if length > max_length:
        return -penalty
    return penalty * (start - length) / buffer_tokens


def informative_group(rewards: Sequence[float]) -> bool:
    """DAPO dynamic sampling keeps a group only if its rewards do not all agree (0 < accuracy < 1 for 0/1
    rewards): a group of equal rewards has zero group-relative advantage and gives no gradient."""
    return len(rewards) > 0 and min(rewards) != max(rewards)
