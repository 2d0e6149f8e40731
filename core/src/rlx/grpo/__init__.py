"""Pure GRPO algorithm code over tensors: advantage estimators, policy losses, aggregations, mismatch corrections,
KL, reward shaping, metrics. No I/O, no Ray. Options are selected by name through `rlx.algorithms`."""

from rlx.grpo.advantages import group_advantages
from rlx.grpo.losses import kl_k3, policy_loss
from rlx.grpo.metrics import entropy_from_logits, logprob_mismatch, pass_at_k, rollout_metrics

__all__ = [
    "entropy_from_logits",
    "group_advantages",
    "kl_k3",
    "logprob_mismatch",
    "pass_at_k",
    "policy_loss",
    "rollout_metrics",
]
