"""Pure GRPO algorithm code over tensors: advantages, losses, KL, metrics. No I/O, no Ray."""

from rlx.grpo.advantages import group_advantages
from rlx.grpo.losses import LOSS_AGGREGATIONS, kl_k3, policy_loss, register_loss_aggregation
from rlx.grpo.metrics import entropy_from_logits, logprob_mismatch, pass_at_k, rollout_metrics

__all__ = [
    "LOSS_AGGREGATIONS",
    "entropy_from_logits",
    "group_advantages",
    "kl_k3",
    "logprob_mismatch",
    "pass_at_k",
    "policy_loss",
    "register_loss_aggregation",
    "rollout_metrics",
]
