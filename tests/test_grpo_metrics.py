"""rollout_metrics, logprob_mismatch, entropy_from_logits and pass_at_k against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlx.grpo.metrics import entropy_from_logits, logprob_mismatch, pass_at_k, rollout_metrics


def test_rollout_metrics_values():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # groups 2 and 3 have zero variance
    advantages = torch.tensor([[0.5, -0.5], [0.0, 0.0], [0.0, 0.0]])
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    truncated = torch.tensor([False, False, False, True, False, True])
    m = rollout_metrics(rewards, advantages, lengths, truncated=truncated)
    # rewards: 3 ones out of 6, mean 0.5, squared deviations 6 x 0.25 = 1.5, unbiased var 1.5/5 = 0.3
    assert m["reward/mean"] == pytest.approx(0.5)
    assert m["reward/std"] == pytest.approx(math.sqrt(0.3))
    assert (m["reward/min"], m["reward/max"]) == (0.0, 1.0)
    assert m["reward/zero_variance_groups"] == pytest.approx(2 / 3)
    # advantages: mean 0, squared deviations 0.5, var 0.5/5 = 0.1
    assert m["advantage/mean"] == pytest.approx(0.0)
    assert m["advantage/std"] == pytest.approx(math.sqrt(0.1))
    assert (m["advantage/min"], m["advantage/max"]) == (-0.5, 0.5)
    # lengths: mean 35, squared deviations 625+225+25+25+225+625 = 1750, var 350
    assert m["response_length/mean"] == pytest.approx(35.0)
    assert m["response_length/std"] == pytest.approx(math.sqrt(350.0))
    assert (m["response_length/min"], m["response_length/max"]) == (10.0, 60.0)
    assert m["response_length/truncated_frac"] == pytest.approx(2 / 6)
    assert all(isinstance(x, float) for x in m.values())


def test_rollout_metrics_without_truncation_and_shape_errors():
    m = rollout_metrics(torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([3.0]))
    assert "response_length/truncated_frac" not in m
    assert m["reward/std"] == 0.0 and m["reward/zero_variance_groups"] == 1.0
    with pytest.raises(ValueError, match="P\\*G"):
        rollout_metrics(torch.ones(2, 2), torch.zeros(2, 2), torch.ones(3))


def test_logprob_mismatch_values():
    gen = torch.tensor([[0.0, -1.0, -7.0]])
    train = torch.tensor([[0.0, -1.5, 0.0]])
    mask = torch.tensor([[True, True, False]])  # the large difference is padding
    # (exp(0) + exp(0.5)) / 2 = (1 + 1.6487212707) / 2
    assert logprob_mismatch(gen, train, mask) == pytest.approx(1.32436063535)
    assert logprob_mismatch(gen, gen, torch.ones(1, 3, dtype=torch.bool)) == 1.0
    assert logprob_mismatch(gen, train, torch.zeros(1, 3, dtype=torch.bool)) == 1.0


def test_entropy_from_logits_values():
    uniform = torch.zeros(4)  # ln 4 = 1.3862944
    skewed = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0]))  # 0.5 ln2 + 0.5 ln4 = 1.5 ln2 = 1.0397208
    logits = torch.stack([uniform, skewed, torch.tensor([3.0, -1.0, 0.5, 2.0])]).view(1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    ent = entropy_from_logits(logits, mask=mask, chunk_size=2)
    torch.testing.assert_close(ent, torch.tensor([[1.3862944, 1.0397208, 0.0]]))
    # chunking does not change the values
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=1), entropy_from_logits(logits))


def test_entropy_is_float32_for_bf16_logits():
    logits = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    ent = entropy_from_logits(logits)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, torch.full((2, 3), math.log(8)))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (2, 1, 1, 0.5),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 0, 1, 0.0),
        (3, 3, 1, 1.0),
        (10, 9, 2, 1.0),  # n - c < k: every draw of 2 has a correct one
        (200, 1, 1, 0.005),
        (10, 3, 5, 1 - 21 / 252),  # C(7,5) = 21, C(10,5) = 252
    ],
)
def test_pass_at_k_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
