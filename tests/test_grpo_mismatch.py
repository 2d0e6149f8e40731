"""Mismatch corrections (none, tis, mis, icepop) at token and sequence level, and DAPO's reward-side pieces,
against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlx.algorithms import MismatchOptions
from rlx.grpo.mismatch import icepop, masked_is, mismatch_weights, no_correction, truncated_is
from rlx.grpo.rewards import informative_group, overlong_penalty

# per token log(pi_old / pi_gen): rho = 3, 0.5, 1 on row 0; row 1: rho 1.5 then padding
OLD = torch.tensor([[math.log(3.0), math.log(0.5), 0.0], [math.log(1.5), 0.0, 0.0]])
GEN = torch.zeros(2, 3)
MASK = torch.tensor([[True, True, True], [True, False, False]])
OPTS = MismatchOptions(cap=2.0, lower=0.6)


def weights(fn, level="token"):
    return mismatch_weights(OLD, GEN, MASK, fn, level=level, options=OPTS)


def test_token_level_corrections():
    w, m = weights(truncated_is)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 1.0], [1.5, 0.0, 0.0]]))
    assert m["mismatch/clipped_frac"] == pytest.approx(0.25) and m["mismatch/masked_frac"] == 0.0
    assert m["mismatch/weight_mean"] == pytest.approx(5.0 / 4)
    assert m["mismatch/ratio_mean"] == pytest.approx(6.0 / 4)
    w, m = weights(masked_is)  # rho 3 > cap: masked, not truncated
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.5, 1.0], [1.5, 0.0, 0.0]]))
    assert m["mismatch/masked_frac"] == pytest.approx(0.25) and m["mismatch/clipped_frac"] == 0.0
    w, m = weights(icepop)  # two-sided: 3 > 2 and 0.5 < 0.6 are masked
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.0], [1.5, 0.0, 0.0]]))
    assert m["mismatch/masked_frac"] == pytest.approx(0.5)
    w, m = weights(no_correction)
    torch.testing.assert_close(w, MASK.float())
    assert m["mismatch/weight_mean"] == 1.0 and m["mismatch/ratio_mean"] == pytest.approx(1.5)


def test_sequence_level_corrections():
    # row 0: rho = 3 * 0.5 * 1 = 1.5, row 1: 1.5 -> both under the cap; metrics count sequences
    w, m = weights(truncated_is, "sequence")
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.5, 1.5], [1.5, 0.0, 0.0]]))
    assert m["mismatch/clipped_frac"] == 0.0 and m["mismatch/weight_mean"] == pytest.approx(1.5)
    # tighter cap 1.2: tis truncates each sequence to 1.2, mis masks both
    opts = MismatchOptions(cap=1.2)
    w, m = mismatch_weights(OLD, GEN, MASK, truncated_is, level="sequence", options=opts)
    torch.testing.assert_close(w, torch.tensor([[1.2, 1.2, 1.2], [1.2, 0.0, 0.0]]))
    assert m["mismatch/clipped_frac"] == 1.0
    w, m = mismatch_weights(OLD, GEN, MASK, masked_is, level="sequence", options=opts)
    assert torch.equal(w, torch.zeros(2, 3)) and m["mismatch/masked_frac"] == 1.0


def test_huge_sequence_log_ratio_stays_finite():
    old = torch.full((1, 64), 1.0)  # sum of log-ratios 64 -> clamped to 20
    w, m = mismatch_weights(old, torch.zeros(1, 64), torch.ones(1, 64, dtype=torch.bool), masked_is,
                            level="sequence", options=OPTS)
    assert torch.equal(w, torch.zeros(1, 64)) and math.isfinite(m["mismatch/ratio_mean"])


def test_overlong_penalty_is_dapos_linear_ramp():
    # L_max 10, L_cache 4: no penalty up to 6 tokens, then linear to -penalty at 10
    assert [overlong_penalty(n, 10, 4, 1.0) for n in (0, 6, 7, 8, 10, 11)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_penalty(8, 10, 4, 0.5) == -0.25
    assert overlong_penalty(10, 10, 0, 1.0) == 0.0  # off


def test_informative_group():
    assert informative_group([0.0, 1.0, 1.0]) and not informative_group([1.0, 1.0]) and not informative_group([])
    assert informative_group([1.0, 0.75])  # a length penalty makes equal scores differ
