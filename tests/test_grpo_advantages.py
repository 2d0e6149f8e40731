"""Advantages against hand-computed values: group_advantages (mean and leave-one-out baselines, with and without
std) and the registered estimators grpo, rloo and reinforce_pp."""

from __future__ import annotations

import math

import pytest
import torch

from rlx.algorithms import AdvantageOptions
from rlx.grpo.advantages import group_advantages, grpo_advantages, reinforce_pp_advantages, rloo_advantages


def adv(rows, **kw):
    return group_advantages(torch.tensor(rows, dtype=torch.float32), **kw)


def close(got: torch.Tensor, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), atol=tol, rtol=0)


def test_mean_baseline_without_std():
    # means 0.5 and 3
    close(
        adv([[1, 0, 0, 1], [1, 2, 3, 6]], baseline="mean", normalize_std=False),
        [[0.5, -0.5, -0.5, 0.5], [-2, -1, 0, 3]],
    )


def test_mean_baseline_with_unbiased_std():
    # [1,0,0,1]: squared deviations 4 x 0.25 = 1, unbiased var 1/3, std 0.57735..., 0.5 / 0.57735 = 0.8660254
    # [1,2,3,6]: squared deviations 4+1+0+9 = 14, var 14/3, std 2.1602469
    s = 2.1602468994692865
    expected = [[0.8660254, -0.8660254, -0.8660254, 0.8660254], [-2 / s, -1 / s, 0.0, 3 / s]]
    close(adv([[1, 0, 0, 1], [1, 2, 3, 6]], baseline="mean", normalize_std=True, eps=0.0), expected)


def test_eps_is_added_to_std():
    # std of [0, 2] is sqrt(2) (unbiased), deviations -1, +1
    got = adv([[0, 2]], baseline="mean", normalize_std=True, eps=0.5)
    close(got, [[-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)]])


def test_leave_one_out_without_std():
    # [1,2,3,6], sum 12: baselines 11/3, 10/3, 3, 2
    got = adv([[1, 2, 3, 6]], baseline="leave_one_out", normalize_std=False)
    close(got, [[-8 / 3, -4 / 3, 0.0, 4.0]])


def test_leave_one_out_with_leave_one_out_std():
    # others of 1: [2,3,6], mean 11/3, squared deviations (25+4+49)/9, var /2 = 13/3
    # others of 2: [1,3,6], mean 10/3, squared deviations (49+1+64)/9, var /2 = 19/3
    # others of 3: [1,2,6], var 7 (advantage 0 anyway); others of 6: [1,2,3], var 1
    expected = [[(-8 / 3) / math.sqrt(13 / 3), (-4 / 3) / math.sqrt(19 / 3), 0.0, 4.0]]
    close(adv([[1, 2, 3, 6]], baseline="leave_one_out", normalize_std=True, eps=0.0), expected)


def test_leave_one_out_zero_std_of_others_stays_unnormalised():
    # [1,1,0]: for the 1s the others are [1,0] (mean 0.5, std sqrt(0.5)); for the 0 they are [1,1] (std 0):
    # like NeMo-RL, that one is not divided by eps
    got = adv([[1, 1, 0]], baseline="leave_one_out", normalize_std=True, eps=1e-6)
    half = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(got, [[half, half, -1.0]])
    # G=2: a single other reward has no std
    close(adv([[1, 0]], baseline="leave_one_out", normalize_std=True), [[1.0, -1.0]])


@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
@pytest.mark.parametrize("normalize_std", [False, True])
def test_zero_variance_group_is_exactly_zero(baseline, normalize_std):
    # 0.1 is not exact in binary: the mean of equal values can differ from them by rounding
    rows = [[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.7, 0.7, 0.7]]
    got = adv(rows, baseline=baseline, normalize_std=normalize_std)
    assert torch.equal(got, torch.zeros(4, 3))
    assert torch.equal(adv([[0.3], [5.0]], baseline=baseline, normalize_std=normalize_std), torch.zeros(2, 1))
    # in float64, 0.1 + 0.1 + 0.1 = 0.30000000000000004 and its mean is 0.10000000000000002, not 0.1
    rows64 = torch.tensor([[0.1, 0.1, 0.1]], dtype=torch.float64)
    got64 = group_advantages(rows64, baseline=baseline, normalize_std=normalize_std)
    assert got64.dtype == torch.float64 and torch.equal(got64, torch.zeros(1, 3, dtype=torch.float64))


def test_leave_one_out_equal_others_are_not_divided_by_a_rounding_std():
    # for the 0.7, the others [0.1, 0.1, 0.1] have std 0 exactly (rounding alone gives ~1e-17, and
    # 0.6 / (1e-17 + eps) would be ~6e5); for each 0.1 the others [0.1, 0.1, 0.7] have mean 0.3 and
    # unbiased std sqrt((0.04 + 0.04 + 0.16) / 2) = sqrt(0.12)
    rows = torch.tensor([[0.1, 0.1, 0.1, 0.7]], dtype=torch.float64)
    got = group_advantages(rows, baseline="leave_one_out", normalize_std=True, eps=0.0)
    small = -0.2 / math.sqrt(0.12)
    torch.testing.assert_close(got, torch.tensor([[small, small, small, 0.6]], dtype=torch.float64))


def test_mixed_groups_keep_rows_independent():
    got = adv([[1, 1, 1, 1], [1, 0, 0, 1]], baseline="mean", normalize_std=True, eps=0.0)
    close(got, [[0, 0, 0, 0], [0.8660254, -0.8660254, -0.8660254, 0.8660254]])


def test_flat_input_with_group_size():
    got = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), baseline="mean", normalize_std=False, group_size=2)
    assert got.shape == (4,)
    close(got, [0.5, -0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.ones(5), group_size=2)


def test_integer_rewards_give_float32_and_bad_baseline_is_named():
    got = group_advantages(torch.tensor([[1, 0]]), baseline="mean", normalize_std=False)
    assert got.dtype == torch.float32
    close(got, [[0.5, -0.5]])
    with pytest.raises(ValueError, match="leave_one_out"):
        group_advantages(torch.ones(1, 2), baseline="median")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- registered estimators

OPTS = AdvantageOptions(baseline="mean", normalize_std=True, eps=0.0)


def test_grpo_estimator_passes_its_options():
    rows = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    close(grpo_advantages(rows, OPTS), [[0.8660254, -0.8660254, -0.8660254, 0.8660254]])
    # Dr. GRPO's "no std" is the grpo estimator with normalize_std=false
    close(grpo_advantages(rows, AdvantageOptions(normalize_std=False)), [[0.5, -0.5, -0.5, 0.5]])
    close(grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), AdvantageOptions("leave_one_out", False)),
          [[-8 / 3, -4 / 3, 0.0, 4.0]])


def test_rloo_is_leave_one_out_without_std_whatever_the_options():
    # [1,2,3,6]: r_i - mean of the others = G/(G-1) (r_i - 3) = 4/3 * [-2, -1, 0, 3]
    for opts in (OPTS, AdvantageOptions(normalize_std=False)):
        close(rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), opts), [[-8 / 3, -4 / 3, 0.0, 4.0]])
    # all-equal group and G = 1: exactly zero
    assert torch.equal(rloo_advantages(torch.tensor([[0.7, 0.7, 0.7], [1.0, 1.0, 1.0]]), OPTS), torch.zeros(2, 3))
    assert torch.equal(rloo_advantages(torch.tensor([[1.0], [0.0]]), OPTS), torch.zeros(2, 1))


def test_reinforce_pp_normalises_over_the_whole_batch():
    # group means 0.5 and 0.75 -> centred [.5,-.5,-.5,.5], [.25,.25,.25,-.75]; batch mean 0;
    # unbiased batch variance (4 * .25 + 3 * .0625 + .5625) / 7 = 0.25 -> std 0.5
    got = reinforce_pp_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]), OPTS)
    close(got, [[1.0, -1.0, -1.0, 1.0], [0.5, 0.5, 0.5, -1.5]])


def test_reinforce_pp_constant_groups_and_single_samples():
    # the all-equal group stays 0 but counts in the batch std: centred [0, 0], [-.5, .5], var 0.5 / 3
    s = math.sqrt(0.5 / 3)
    close(reinforce_pp_advantages(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), OPTS), [[0.0, 0.0], [-0.5 / s, 0.5 / s]])
    # G = 1 (plain REINFORCE++): no group baseline, batch mean 0.5, unbiased std sqrt(1/3)
    t = math.sqrt(1 / 3)
    close(reinforce_pp_advantages(torch.tensor([[1.0], [0.0], [0.0], [1.0]]), OPTS),
          [[0.5 / t], [-0.5 / t], [-0.5 / t], [0.5 / t]])
    # no spread anywhere: zero, never NaN
    assert torch.equal(reinforce_pp_advantages(torch.ones(3, 4), OPTS), torch.zeros(3, 4))
    assert torch.equal(reinforce_pp_advantages(torch.ones(1, 1), OPTS), torch.zeros(1, 1))
