"""The builtin algorithm options, registered through the `register_algorithms` hook like a plugin's."""

from __future__ import annotations

from rlx.algorithms import AlgorithmRegistry
from rlx.grpo import advantages, losses, mismatch


def register_builtin_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add_advantage_estimator("grpo", advantages.grpo_advantages)
    registry.add_advantage_estimator("rloo", advantages.rloo_advantages)
    registry.add_advantage_estimator("reinforce_pp", advantages.reinforce_pp_advantages)
    registry.add_policy_loss("ppo_clip", losses.ppo_clip)
    registry.add_policy_loss("gspo", losses.gspo)
    registry.add_policy_loss("gspo_token", losses.gspo_token)
    registry.add_policy_loss("cispo", losses.cispo)
    registry.add_loss_aggregation("token", losses.token_mean_weights)
    registry.add_loss_aggregation("sequence", losses.sequence_mean_weights)
    registry.add_loss_aggregation("dr_grpo", losses.dr_grpo_weights)
    registry.add_mismatch_correction("none", mismatch.no_correction)
    registry.add_mismatch_correction("tis", mismatch.truncated_is)
    registry.add_mismatch_correction("mis", mismatch.masked_is)
    registry.add_mismatch_correction("icepop", mismatch.icepop)
