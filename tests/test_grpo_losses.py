"""The loss aggregations, the policy losses (ppo_clip, gspo, gspo_token, cispo), kl_k3 and policy_loss against
hand-computed values, and micro-batch invariance for every loss x aggregation."""

from __future__ import annotations

import functools
import math
import pickle

import pytest
import torch

from rlx.algorithms import AggregationOptions
from rlx.grpo.losses import (
    cispo,
    dr_grpo_weights,
    gspo,
    gspo_token,
    kl_k3,
    policy_loss,
    ppo_clip,
    sequence_mean_weights,
    token_mean_weights,
)
from rlx.interfaces import TrainBatch

OPTIONS = AggregationOptions(max_completion_tokens=5, sequences_per_mini_batch=4)
AGGREGATIONS = {"token": token_mean_weights, "sequence": sequence_mean_weights, "dr_grpo": dr_grpo_weights}


def aggregate(name: str, mask: torch.Tensor, options: AggregationOptions = OPTIONS) -> torch.Tensor:
    return AGGREGATIONS[name](mask, options)


def make_batch(
    old: torch.Tensor,
    advantages,
    mask: torch.Tensor | None = None,
    ref: torch.Tensor | None = None,
    agg: str = "token",
    is_weights: torch.Tensor | None = None,
) -> TrainBatch:
    mask = torch.ones_like(old, dtype=torch.bool) if mask is None else mask
    ids = torch.zeros(old.shape, dtype=torch.long)
    return TrainBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        completion_mask=mask,
        old_logprobs=old,
        advantages=torch.tensor(advantages, dtype=torch.float32),
        loss_weights=aggregate(agg, mask),
        ref_logprobs=ref,
        is_weights=is_weights,
    )


def with_ratios(ratios) -> tuple[torch.Tensor, torch.Tensor]:
    """old logprobs and new logprobs (requiring grad) such that exp(new - old) == ratios."""
    old = torch.full((len(ratios), len(ratios[0])), -1.0)
    new = (old + torch.log(torch.tensor(ratios, dtype=torch.float32))).requires_grad_()
    return old, new


# ---------------------------------------------------------------------------------------------- aggregations


def test_token_aggregation_values():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)  # 4 valid tokens
    expected = torch.tensor([[0, 0.25, 0.25, 0.25], [0, 0.25, 0, 0]])
    torch.testing.assert_close(aggregate("token", mask), expected)


def test_sequence_aggregation_values():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)  # lengths 3 and 1, B = 2
    expected = torch.tensor([[0, 1 / 6, 1 / 6, 1 / 6], [0, 0.5, 0, 0]])
    torch.testing.assert_close(aggregate("sequence", mask), expected)
    # an empty completion gets no weight and does not count in B
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    torch.testing.assert_close(aggregate("sequence", mask), torch.tensor([[0.5, 0.5], [0, 0]]))


def test_empty_mask_gives_zero_weights():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for name in AGGREGATIONS:
        assert torch.equal(aggregate(name, mask), torch.zeros(2, 3))


def test_dr_grpo_aggregation_divides_by_run_constants():
    # mini_batch_size 4, max_new_tokens 5: every valid token weighs 1 / 20, whatever the lengths
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]]) / 20
    torch.testing.assert_close(aggregate("dr_grpo", mask), expected)
    # a sequence's weights do not depend on the other sequences (no length bias): row 0 alone, same weights
    torch.testing.assert_close(aggregate("dr_grpo", mask[:1]), expected[:1])
    # and the loss of a sequence is its token sum / 20: A = 1, ratio 1 -> -3/20 - 1/20
    old, new = with_ratios([[1.0] * 4, [1.0] * 4])
    loss, _ = policy_loss(new, make_batch(old, [1.0, 1.0], mask, agg="dr_grpo"))
    assert loss.item() == pytest.approx(-4 / 20, abs=1e-7)


# ---------------------------------------------------------------------------------------------- clipped loss


def test_clip_low_and_high_values_and_gradient():
    # clip_low 0.2, clip_high 0.28 (asymmetric, as DAPO); seq 0 has A=+1, seq 1 has A=-1
    old, new = with_ratios([[1.5, 0.5, 1.1], [1.5, 0.5, 0.9]])
    batch = make_batch(old, [1.0, -1.0])
    loss, m = policy_loss(new, batch, clip_low=0.2, clip_high=0.28, dual_clip=None, kl_coef=0.0)
    # per-token losses: A=+1: max(-1.5,-1.28)=-1.28 (clipped), max(-0.5,-0.8)=-0.5, -1.1
    #                   A=-1: max(1.5,1.28)=1.5, max(0.5,0.8)=0.8 (clipped), 0.9
    # token mean: (-1.28 - 0.5 - 1.1 + 1.5 + 0.8 + 0.9) / 6 = 0.32 / 6
    assert loss.item() == pytest.approx(0.32 / 6, abs=1e-6)
    assert m["pg_loss"].item() == pytest.approx(0.32 / 6, abs=1e-6)
    assert m["clip_frac"].item() == pytest.approx(2 / 6, abs=1e-6)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 6, abs=1e-6)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 6, abs=1e-6)
    assert m["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)  # (1.5+.5+1.1+1.5+.5+.9)/6
    assert m["advantage_mean"].item() == pytest.approx(0.0, abs=1e-6)
    assert "kl" not in m and "dual_clip_frac" not in m
    loss.backward()
    # d/dnew of -A*ratio is -A*ratio (ratio = exp(new - old)); clipped tokens get no gradient; weights 1/6
    expected = torch.tensor([[0.0, -0.5, -1.1], [1.5, 0.0, 0.9]]) / 6
    torch.testing.assert_close(new.grad, expected)


def test_dual_clip_bounds_negative_advantage_loss():
    # c = 3: A=-1, ratio 5 -> max(5, 1.28) = 5, bounded to 3; ratio 2 -> 2 (under the bound)
    #        A=-2, ratio 4 -> max(8, 2.56) = 8, bounded to 6; A=+1, ratio 5 -> max(-5, -1.28) = -1.28
    old, new = with_ratios([[5.0, 2.0], [4.0, 4.0], [5.0, 5.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]], dtype=torch.bool)
    batch = make_batch(old, [-1.0, -2.0, 1.0], mask=mask)
    loss, m = policy_loss(new, batch, clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0)
    assert loss.item() == pytest.approx((3 + 2 + 6 - 1.28) / 4, abs=1e-5)
    assert m["dual_clip_frac"].item() == pytest.approx(2 / 4, abs=1e-6)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 4, abs=1e-6)
    loss.backward()
    # only the ratio-2 token is on the unclipped branch: gradient -A*ratio*w = 2 / 4
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 0.5], [0.0, 0.0], [0.0, 0.0]]))
    # without dual clip the same batch: (5 + 2 + 8 - 1.28) / 4
    loss_plain, _ = policy_loss(new, batch, clip_low=0.2, clip_high=0.28, dual_clip=None, kl_coef=0.0)
    assert loss_plain.item() == pytest.approx((5 + 2 + 8 - 1.28) / 4, abs=1e-5)


def test_sequence_aggregation_in_the_loss():
    # ratios all 1 (no clipping): per-token loss = -A; A = [2, -1], lengths 2 and 1
    old, new = with_ratios([[1.0, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    seq_loss, _ = policy_loss(new, make_batch(old, [2.0, -1.0], mask, agg="sequence"), clip_low=0.2, clip_high=0.2)
    tok_loss, _ = policy_loss(new, make_batch(old, [2.0, -1.0], mask, agg="token"), clip_low=0.2, clip_high=0.2)
    # sequence: mean(-2, +1) = -0.5; token: (-2 - 2 + 1) / 3 = -1
    assert seq_loss.item() == pytest.approx(-0.5, abs=1e-6)
    assert tok_loss.item() == pytest.approx(-1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------- KL


def test_all_tokens_clipped_gives_no_gradient():
    # A=+1 with every ratio above 1 + high, A=-1 with every ratio below 1 - low: the clipped branch everywhere
    old, new = with_ratios([[1.5, 2.0], [0.5, 0.1]])
    loss, m = policy_loss(new, make_batch(old, [1.0, -1.0]), clip_low=0.2, clip_high=0.28)
    # (-1.28 - 1.28 + 0.8 + 0.8) / 4
    assert loss.item() == pytest.approx(-0.96 / 4, abs=1e-6)
    loss.backward()
    assert torch.equal(new.grad, torch.zeros(2, 2))
    assert m["clip_frac"].item() == pytest.approx(1.0) and m["clip_seqs"].item() == 2.0
    assert m["clip_frac_high"].item() == pytest.approx(0.5) and m["clip_frac_low"].item() == pytest.approx(0.5)


def test_one_token_completion():
    # B=1, one valid token with ratio 1.1, A = 2: unclipped (1.1 < 1.2): loss -2.2, gradient -A*ratio = -2.2
    old, new = with_ratios([[1.1, 1.0]])
    mask = torch.tensor([[True, False]])
    for surrogate in (ppo_clip, gspo, gspo_token):
        fresh = new.detach().clone().requires_grad_()
        loss, m = policy_loss(fresh, make_batch(old, [2.0], mask, agg="sequence"), surrogate=surrogate)
        assert loss.item() == pytest.approx(-2.2, abs=1e-6), surrogate.__name__
        loss.backward()
        torch.testing.assert_close(fresh.grad, torch.tensor([[-2.2, 0.0]]))
        assert m["clip_seqs"].item() == 0.0


# ---------------------------------------------------------------------------------------------- GSPO


@pytest.mark.parametrize("surrogate", [gspo, gspo_token])
def test_gspo_sequence_ratio_and_sequence_clipping(surrogate):
    # seq 0: token ratios 2 and 0.5 -> geometric mean s = 1 (unclipped), A = -1 -> loss_0 = +1;
    #        ds/dlog_ratio_t = s / 2 = 0.5 per token, times its loss weight share
    # seq 1: one token, ratio 1.5 -> s = 1.5 > 1 + 0.2 with A = +1: clipped, loss_1 = -1.2, no gradient
    old, new = with_ratios([[2.0, 0.5], [1.5, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, m = policy_loss(new, make_batch(old, [-1.0, 1.0], mask, agg="sequence"), surrogate=surrogate,
                          clip_low=0.2, clip_high=0.2)
    # sequence mean: (1 + (-1.2)) / 2
    assert loss.item() == pytest.approx(-0.1, abs=1e-6)
    loss.backward()
    # d loss / d new_0,t = 0.5 (sequence weight) * 0.5 (ds/dlr_t, A = -1)
    torch.testing.assert_close(new.grad, torch.tensor([[0.25, 0.25], [0.0, 0.0]]))
    assert m["clip_seqs"].item() == 1.0
    assert m["clip_frac"].item() == pytest.approx(0.5, abs=1e-6)  # seq 1 holds half of the loss weight
    assert m["clip_frac_high"].item() == pytest.approx(0.5, abs=1e-6)


def test_gspo_token_equals_gspo_with_sequence_advantages():
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 6, generator=gen)
    new0 = old + 0.1 * torch.randn(4, 6, generator=gen)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    mask[:, 0] = True
    adv = torch.randn(4, generator=gen).tolist()
    for agg in AGGREGATIONS:
        results = []
        for surrogate in (gspo, gspo_token):
            new = new0.clone().requires_grad_()
            loss, m = policy_loss(new, make_batch(old, adv, mask, agg=agg), surrogate=surrogate,
                                  clip_low=0.01, clip_high=0.015)
            loss.backward()
            results.append((loss.detach(), new.grad, {k: v.item() for k, v in m.items()}))
        (la, ga, ma), (lb, gb, mb) = results
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(ga, gb)
        assert ma == pytest.approx(mb)
        assert 0 < ma["clip_seqs"] < 4  # some sequences clipped, some not


# ---------------------------------------------------------------------------------------------- CISPO


def test_cispo_clips_the_weight_and_keeps_every_gradient():
    # ratios 1.5, 0.5, 1.1 with A = +1, clip 0.2 / 0.28: weights 1.28, 0.8, 1.1 (stop-gradient)
    old, new = with_ratios([[1.5, 0.5, 1.1]])
    loss, m = policy_loss(new, make_batch(old, [1.0]), surrogate=cispo, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.8 + 1.1) / 3, abs=1e-6)
    loss.backward()
    # gradient -A * w_t * d log pi / d new = -w_t, times 1/3: clipped tokens still learn (unlike ppo_clip)
    torch.testing.assert_close(new.grad, torch.tensor([[-1.28, -0.8, -1.1]]) / 3)
    assert m["clip_frac"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert m["clip_seqs"].item() == 1.0


# ---------------------------------------------------------------------------------------------- mismatch weights


def test_is_weights_multiply_the_policy_gradient_term_only():
    # ratios 1, A = [1, -1], is_weights 2 and 0 (masked) on seq 0, 0.5 on seq 1; KL on with ref = old
    old, new = with_ratios([[1.0, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([[2.0, 0.0], [0.5, 0.0]])
    batch = make_batch(old, [1.0, -1.0], mask, ref=old.clone(), is_weights=w)
    loss, m = policy_loss(new, batch, kl_coef=0.1)
    # token mean of is_w * (-A * 1): (-2 + 0 + 0.5) / 3; kl is 0 at ref = new
    assert loss.item() == pytest.approx(-1.5 / 3, abs=1e-6)
    assert m["is_weight_mean"].item() == pytest.approx(2.5 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-2.0, 0.0], [0.5, 0.0]]) / 3)


def test_kl_k3_values():
    # d = ref - logp: 0 -> 0; ln 2 -> 2 - ln2 - 1; -ln 2 -> 0.5 + ln2 - 1; 1 -> e - 2
    logp = torch.tensor([[-1.0, math.log(0.25), math.log(0.5), -2.0]])
    ref = torch.tensor([[-1.0, math.log(0.5), math.log(0.25), -1.0]])
    expected = torch.tensor([[0.0, 0.30685282, 0.19314718, 0.71828183]])
    torch.testing.assert_close(kl_k3(logp, ref), expected)


def test_kl_term_in_loss_and_missing_reference_error():
    # A = 0 so the surrogate is 0 and the loss is kl_coef * mean(kl) = 0.1 * (0.30685282 + 0.19314718) / 2
    logp = torch.tensor([[math.log(0.25), math.log(0.5)]])
    ref = torch.tensor([[math.log(0.5), math.log(0.25)]])
    batch = make_batch(logp.clone(), [0.0], ref=ref)
    loss, m = policy_loss(logp.clone().requires_grad_(), batch, clip_low=0.2, clip_high=0.2, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * 0.25, abs=1e-6)
    assert m["kl"].item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, make_batch(logp, [0.0]), clip_low=0.2, clip_high=0.2, kl_coef=0.1)


def test_padding_nan_does_not_leak_and_float32():
    old, new = with_ratios([[1.2, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    new_bf16 = new.detach().clone()
    new_bf16[0, 2] = float("nan")
    new_bf16 = new_bf16.to(torch.bfloat16).requires_grad_()
    loss, m = policy_loss(new_bf16, make_batch(old, [1.0], mask), clip_low=0.2, clip_high=0.2)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new_bf16.grad).all()
    assert new_bf16.grad[0, 2].item() == 0.0
    assert all(torch.isfinite(v) for v in m.values())


def test_partial_is_picklable():
    fn = functools.partial(policy_loss, clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0)
    again = pickle.loads(pickle.dumps(fn))
    old, new = with_ratios([[1.5, 0.5]])
    batch = make_batch(old, [1.0])
    assert again(new, batch)[0].item() == fn(new, batch)[0].item()


# ---------------------------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("surrogate", [ppo_clip, gspo, gspo_token, cispo], ids=lambda f: f.__name__)
def test_micro_batch_split_gives_the_same_gradient(agg, surrogate):
    """Gradient of a tiny linear policy: the full batch equals the sum over 1, 2, 4 and 8 micro-batches (whole
    sequences each), for every policy loss and aggregation, with mismatch weights and the KL term on."""
    gen = torch.Generator().manual_seed(0)
    b, t, d, v = 8, 7, 5, 11
    feats = torch.randn(b, t, d, generator=gen)
    ids = torch.randint(0, v, (b, t), generator=gen)
    prompt_len = torch.randint(1, 3, (b, 1), generator=gen)
    comp_len = torch.randint(1, t - 2, (b, 1), generator=gen)
    pos = torch.arange(t).unsqueeze(0)
    mask = (pos >= prompt_len) & (pos < prompt_len + comp_len)  # uneven completion lengths
    weight0 = torch.randn(d, v, generator=gen) * 0.5

    def logprobs(w: torch.Tensor, rows: slice) -> torch.Tensor:
        lp = torch.log_softmax(feats[rows] @ w, dim=-1).gather(-1, ids[rows].unsqueeze(-1)).squeeze(-1)
        return torch.where(mask[rows], lp, torch.zeros_like(lp))

    old = logprobs(weight0 + 0.3 * torch.randn(d, v, generator=gen), slice(None)).detach()
    ref = logprobs(weight0 + 0.3 * torch.randn(d, v, generator=gen), slice(None)).detach()
    full = TrainBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        completion_mask=mask,
        old_logprobs=old,
        advantages=torch.randn(b, generator=gen),
        loss_weights=aggregate(agg, mask, AggregationOptions(max_completion_tokens=t, sequences_per_mini_batch=b)),
        ref_logprobs=ref,
        is_weights=torch.rand(b, t, generator=gen) * 2,
    )
    # a clip range the ratios cross (per token and per sequence)
    clip = (0.1, 0.15) if surrogate in (ppo_clip, cispo) else (0.01, 0.015)
    loss_fn = functools.partial(policy_loss, surrogate=surrogate, clip_low=clip[0], clip_high=clip[1], dual_clip=2.0,
                                kl_coef=0.05)

    def grad_and_metrics(splits: int) -> tuple[torch.Tensor, dict[str, float]]:
        w = weight0.clone().requires_grad_()
        totals: dict[str, float] = {}
        for rows in torch.arange(b).chunk(splits):
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            part = TrainBatch(
                **{k: getattr(full, k)[sl] for k in ("input_ids", "attention_mask", "completion_mask")},
                **{k: getattr(full, k)[sl] for k in ("old_logprobs", "advantages", "loss_weights", "ref_logprobs",
                                                     "is_weights")},
            )
            loss, metrics = loss_fn(logprobs(w, sl), part)
            loss.backward()  # gradients accumulate (sum) in w.grad
            for k, x in metrics.items():
                totals[k] = totals.get(k, 0.0) + x.item()
        return w.grad.clone(), totals

    g1, m1 = grad_and_metrics(1)
    assert g1.abs().sum() > 0 and m1["clip_frac"] > 0  # clipping is exercised
    for splits in (2, 4, 8):
        g, m = grad_and_metrics(splits)
        torch.testing.assert_close(g, g1, atol=1e-6, rtol=1e-5)
        assert m.keys() == m1.keys()
        for k in m1:
            assert m[k] == pytest.approx(m1[k], abs=1e-6), k


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "gspo_token", "cispo"])
def test_selected_loss_fn_is_picklable(name):
    """The loss travels to trainer processes (local spawn, Ray actors) by pickle."""
    from rlx.algorithms import select_algorithms
    from rlx.config import GRPOConfig

    fn = select_algorithms(GRPOConfig(policy_loss=name, clip_high=0.28)).loss_fn()
    again = pickle.loads(pickle.dumps(fn))
    old, new = with_ratios([[1.5, 0.5]])
    batch = make_batch(old, [1.0])
    assert again(new, batch)[0].item() == fn(new, batch)[0].item()
