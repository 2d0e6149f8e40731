"""The GRPO loop's own pieces with fakes (no model): batching, data order, mini-batch loss weights, the rollout
producer (dynamic sampling refills, overlong shaping, exact cursor) and whole steps with the algorithm options."""

from __future__ import annotations

import pytest
import torch

from rlx.algorithms import select_algorithms
from rlx.config import GRPOConfig, ValidationConfig
from rlx.data import DataCursor
from rlx.grpo.losses import token_mean_weights
from rlx.interfaces import Completion, Problem, Score
from rlx.loop import GRPOLoop, mini_batches
from rlx.producer import RolloutProducer
from rlx.rollout import RolloutCollector, Sample, collate


def _samples(prompts, comps):
    problem = Problem("p", ({"role": "user", "content": "x"},), "1")
    return [Sample.single_turn(problem, p, c, "", Score(0.0, "wrong")) for p, c in zip(prompts, comps, strict=True)]


def test_collate_right_pads_and_aligns_generator_logprobs():
    prompts = [[5, 6], [7]]
    comps = [Completion((8, 2), (-0.5, -0.25), "stop"), Completion((9, 9, 9), (-1.0, -2.0, -3.0), "length")]
    batch, gen = collate(_samples(prompts, comps), pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 8, 2], [7, 9, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch.completion_mask.tolist() == [[False, False, True, True], [False, True, True, True]]
    assert gen.tolist() == [[0, 0, -0.5, -0.25], [0, -1.0, -2.0, -3.0]]
    batch2, _ = collate(_samples([[1, 2, 3]], [Completion((), (), "length")]), pad_id=0)
    assert batch2.completion_mask.sum() == 0 and batch2.attention_mask.tolist() == [[1, 1, 1]]


def test_data_cursor_wraps_epochs_and_resumes_identically():
    a = DataCursor(num_problems=5, seed=3)
    first = a.next_indices(4)
    state = a.state()
    rest_a = a.next_indices(8)  # crosses into epoch 1 and 2
    b = DataCursor(num_problems=5, seed=3)
    b.load(state)
    assert b.next_indices(8) == rest_a
    assert sorted(first + rest_a[:1]) == [0, 1, 2, 3, 4]  # epoch 0 is a permutation
    assert a.epoch == 2 and a.index == 2


def test_mini_batch_token_weights_sum_to_one_each():
    B, T = 8, 5
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, 1 : 2 + b % 4] = True
    from rlx.interfaces import TokenBatch

    batch = TokenBatch(torch.zeros(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.long), mask)
    keep = torch.ones(B, 1, dtype=torch.bool)
    keep[3] = False  # a filtered sequence: in the batch, but no loss weight
    opts = select_algorithms(GRPOConfig(prompts_per_step=2, num_generations=4, mini_batch_size=4)).aggregation_options
    mbs = mini_batches(batch, old_logprobs=torch.zeros(B, T), ref_logprobs=None, advantages=torch.arange(B).float(),
                       generator_logprobs=torch.zeros(B, T), is_weights=torch.ones(B, T), loss_mask=mask & keep,
                       size=4, loss_weights=lambda m: token_mean_weights(m, opts),
                       generator=torch.Generator().manual_seed(0))
    assert len(mbs) == 2
    seen = []
    for mb in mbs:
        assert torch.isclose(mb.loss_weights.sum(), torch.tensor(1.0))
        filtered = mb.advantages == 3
        assert torch.equal(mb.loss_weights > 0, mb.completion_mask & ~filtered.unsqueeze(1))
        assert torch.equal(mb.is_weights, torch.ones(4, T))
        seen += mb.advantages.tolist()
    assert sorted(seen) == list(range(B))


# ---------------------------------------------------------------------------------------------- fakes

# answer "all": every completion is right; "none": none is; "mixed": right when it has an odd number of tokens
KINDS = ["all", "mixed", "none", "mixed", "all", "all", "none", "mixed", "all", "none", "all", "mixed"]
PROBLEMS = [Problem(str(i), ({"role": "user", "content": str(i)},), kind) for i, kind in enumerate(KINDS)]


class FakeEncoder:
    max_seq_len = 40
    pad_id = 0

    def encode(self, problem):
        return [1, 2 + int(problem.id)]

    def decode(self, ids):
        return str(len(ids))


class FakeGenerator:
    """Completion j of a prompt has j % 4 + 1 tokens (the longest hits max_new_tokens=4: truncated)."""

    def __init__(self):
        self.calls = []
        self.events = []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.seed))
        self.events.append("generate")
        out = []
        for _ in prompts:
            group = []
            for j in range(params.n):
                n = min(j % 4 + 1, params.max_new_tokens)
                group.append(Completion((7,) * n, (-0.5,) * n, "length" if n == params.max_new_tokens else "stop"))
            out.append(group)
        return out

    def update_weights(self, weights):
        list(weights)

    def wake_up(self):
        self.events.append("wake_up")

    def sleep(self):
        self.events.append("sleep")

    def close(self):
        pass


class DroppingGenerator(FakeGenerator):
    """Declares `can_drop_weights_on_sleep`: after `sleep(drop_weights=True)` it refuses to wake or generate until
    a push, as the contract asks; `pushes` counts the pushes."""

    can_drop_weights_on_sleep = True

    def __init__(self):
        super().__init__()
        self.dropped = False
        self.pushes = 0

    def generate(self, prompts, params):
        assert not self.dropped, "generate after the weights were dropped, without a push"
        return super().generate(prompts, params)

    def update_weights(self, weights):
        super().update_weights(weights)
        self.events.append("push")
        self.pushes += 1
        self.dropped = False

    def wake_up(self):
        assert not self.dropped, "wake_up after the weights were dropped, without a push"
        super().wake_up()

    def sleep(self, drop_weights=False):
        self.events.append("sleep(drop_weights)" if drop_weights else "sleep")
        self.dropped = self.dropped or drop_weights


class FakeEnv:
    def problems(self, split):
        return PROBLEMS

    def score(self, problems, completions):
        out = []
        for p, text in zip(problems, completions, strict=True):
            right = p.answer == "all" or (p.answer == "mixed" and int(text) % 2 == 1)
            out.append(Score(1.0 if right else 0.0, "correct" if right else "wrong"))
        return out

    def close(self):
        pass


class FakeTrainer:
    """pi_old = generator log-probs + 0.1 (a mismatch); train_step evaluates the loss at new = old."""

    def __init__(self):
        self.batches = []

    def logprobs(self, batch, *, temperature=1.0, reference=False):
        return torch.where(batch.completion_mask, torch.full(batch.input_ids.shape, -0.4), torch.zeros(()))

    def train_step(self, batch, loss_fn, *, temperature=1.0):
        self.batches.append(batch)
        new = batch.old_logprobs.clone().requires_grad_()
        loss, metrics = loss_fn(new, batch)
        loss.backward()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}

    def named_weights(self):
        return iter(())


def _grpo(**kw) -> GRPOConfig:
    base = {"prompts_per_step": 4, "num_generations": 4, "mini_batch_size": 8, "max_new_tokens": 4}
    return GRPOConfig.model_validate({**base, **kw})


def _producer(
    grpo: GRPOConfig, seed: int = 0, generator: type[FakeGenerator] = FakeGenerator
) -> tuple[RolloutProducer, DataCursor, FakeGenerator]:
    gen = generator()
    cursor = DataCursor(len(PROBLEMS), seed)
    return RolloutProducer(RolloutCollector(gen, FakeEnv(), FakeEncoder()), cursor, PROBLEMS, grpo), cursor, gen


# ---------------------------------------------------------------------------------------------- producer


def test_producer_without_dynamic_sampling_keeps_every_group_in_one_round():
    producer, cursor, gen = _producer(_grpo())
    out = producer.produce(step_seed=5)
    assert len(out.groups) == 4 and out.groups == out.drawn and out.rewards.shape == (4, 4)
    assert gen.calls == [(4, 5)] and gen.events == ["wake_up", "generate", "sleep"]
    assert cursor.index == 4
    assert out.metrics["dynamic_sampling/rounds"] == 1 and out.metrics["dynamic_sampling/dropped_groups"] == 0


def test_dynamic_sampling_refills_until_full_and_the_cursor_resumes_exactly():
    grpo = _grpo(dynamic_sampling={"enabled": True, "max_rounds": 5})
    producer, cursor, gen = _producer(grpo)
    order = cursor._order(0)
    out = producer.produce(step_seed=5)
    # only "mixed" problems have differing rewards; the first four of them in data order are trained on
    mixed = [i for i in order if KINDS[i] == "mixed"]
    assert [int(g[0].problem.id) for g in out.groups] == mixed[:4]
    assert all(len({s.score.reward for s in g}) > 1 for g in out.groups)
    drawn = [int(g[0].problem.id) for g in out.drawn]
    assert drawn == order[: len(drawn)]  # consecutive draws from the cursor, refills included
    m = out.metrics
    assert m["dynamic_sampling/drawn_groups"] == len(drawn) == cursor.index + 12 * cursor.epoch
    assert m["dynamic_sampling/kept_groups"] == 4 and m["dynamic_sampling/short_groups"] == 0
    assert m["dynamic_sampling/dropped_groups"] + m["dynamic_sampling/kept_groups"]         + m["dynamic_sampling/surplus_groups"] == len(drawn)
    assert m["dynamic_sampling/rounds"] == len(gen.calls) > 1
    assert [seed for _, seed in gen.calls] == [5 + 1_000_003 * r for r in range(len(gen.calls))]
    assert gen.events[0] == "wake_up" and gen.events[-1] == "sleep" and gen.events.count("sleep") == 1
    # a resumed producer (cursor state as checkpointed after the step) draws what the straight one draws next
    state = cursor.state()
    nxt = producer.produce(step_seed=6)
    resumed, resumed_cursor, _ = _producer(grpo)
    resumed_cursor.load(state)
    again = resumed.produce(step_seed=6)
    assert [[s.problem.id for s in g] for g in again.drawn] == [[s.problem.id for s in g] for g in nxt.drawn]
    assert torch.equal(again.rewards, nxt.rewards)


@pytest.mark.parametrize("dynamic_sampling", [False, True])
def test_the_producer_drops_the_weights_at_sleep_only_on_a_generator_that_can(dynamic_sampling):
    # dynamic sampling with 5 rounds: the refills end before the last round, so the sleep after the loop is the one
    grpo = _grpo(dynamic_sampling={"enabled": dynamic_sampling, "max_rounds": 5})
    producer, _, gen = _producer(grpo, generator=DroppingGenerator)
    producer.produce(step_seed=5)
    assert gen.events[0] == "wake_up" and gen.events[-1] == "sleep(drop_weights)"
    assert gen.events.count("sleep(drop_weights)") == 1 and "sleep" not in gen.events
    assert (1 < len(gen.calls) < 5) if dynamic_sampling else len(gen.calls) == 1
    producer, _, plain = _producer(grpo)  # FakeGenerator.sleep takes no argument: a keyword would raise
    producer.produce(step_seed=5)
    assert plain.events[-1] == "sleep" and plain.events.count("sleep") == 1


def test_dynamic_sampling_stops_after_max_rounds_and_trains_on_what_it_kept():
    grpo = _grpo(dynamic_sampling={"enabled": True, "max_rounds": 1})
    producer, _, _ = _producer(grpo)
    out = producer.produce(step_seed=0)
    kept = sum(KINDS[int(g[0].problem.id)] == "mixed" for g in out.drawn)
    assert len(out.groups) == kept < 4 and out.metrics["dynamic_sampling/short_groups"] == 4 - kept


def test_soft_overlong_penalty_shapes_the_rewards():
    # max_new_tokens 4, buffer 2: lengths 1, 2, 3, 4 -> penalties 0, 0, -0.25, -0.5 (penalty 0.5)
    producer, _, _ = _producer(_grpo(overlong={"soft_penalty_tokens": 2, "penalty": 0.5}))
    out = producer.produce(step_seed=0)
    for group, rewards in zip(out.groups, out.rewards.tolist(), strict=True):
        raw = [s.score.reward for s in group]
        assert rewards == pytest.approx([raw[0], raw[1], raw[2] - 0.25, raw[3] - 0.5])
    assert out.metrics["overlong/penalty_mean"] == pytest.approx(-0.75 / 4)


# ---------------------------------------------------------------------------------------------- whole steps


def _loop(grpo: GRPOConfig) -> tuple[GRPOLoop, FakeTrainer]:
    trainer = FakeTrainer()
    loop = GRPOLoop(FakeGenerator(), trainer, FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, PROBLEMS)
    return loop, trainer


@pytest.mark.parametrize("policy_loss", ["ppo_clip", "gspo", "gspo_token", "cispo"])
def test_step_with_the_2025_options(policy_loss):
    grpo = _grpo(policy_loss=policy_loss, advantage="rloo", loss_agg="dr_grpo", dynamic_sampling={"enabled": True},
                 overlong={"filter": True}, mismatch_correction={"kind": "tis", "level": "sequence", "cap": 1.2})
    loop, trainer = _loop(grpo)
    result = loop.run_step()
    m = result.metrics
    assert result.step == 1 and m["dynamic_sampling/kept_groups"] == 4
    # truncated completions (4 tokens) carry no loss: a quarter of the samples
    assert m["overlong/filtered_frac"] == 0.25
    for mb in trainer.batches:
        truncated = mb.completion_mask.sum(dim=1) == 4
        assert torch.equal((mb.loss_weights > 0).any(dim=1), ~truncated)
        # dr_grpo: 1 / (mini_batch_size * max_new_tokens) per token
        assert torch.allclose(mb.loss_weights[mb.loss_weights > 0], torch.tensor(1 / 32))
    # pi_old - pi_gen = 0.1 per token: sequence ratios exp(0.1 * n) for n = 1, 2, 3 -> only n = 1 is under 1.2
    assert m["mismatch/clipped_frac"] == pytest.approx(2 / 3)
    assert m["train/clip_seq_frac"] == 0.0 and "train/is_weight_mean" in m  # new = old: nothing clipped
    assert 0 < m["reward/mean"] < 1 and m["reward/mean"] == sum(
        s.score.reward for g in result.samples for s in g) / sum(len(g) for g in result.samples)


def test_step_with_no_informative_group_trains_nothing():
    only_all = [p for p in PROBLEMS if p.answer == "all"]
    grpo = _grpo(dynamic_sampling={"enabled": True, "max_rounds": 2})
    trainer = FakeTrainer()
    loop = GRPOLoop(FakeGenerator(), trainer, FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, only_all)
    m = loop.run_step().metrics
    assert trainer.batches == [] and m["dynamic_sampling/kept_groups"] == 0 and m["reward/mean"] == 1.0
    assert not any(k.startswith("train/") for k in m) and loop.step == 1


@pytest.mark.parametrize("only_all", [False, True])
def test_steps_on_a_generator_that_drops_its_weights_push_after_every_sleep(only_all):
    # only_all: dynamic sampling keeps no group, nothing is trained, and the push must still follow the sleep
    problems = [p for p in PROBLEMS if p.answer == "all"] if only_all else PROBLEMS
    grpo = _grpo(dynamic_sampling={"enabled": True, "max_rounds": 2})
    gen = DroppingGenerator()
    loop = GRPOLoop(
        gen, FakeTrainer(), FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, problems, val_problems=problems[:2]
    )
    for step in (1, 2, 3):
        assert loop.run_step().step == step
        assert gen.events[-2:] == ["sleep(drop_weights)", "push"] and gen.pushes == step
    gen.events.clear()
    assert loop.validate()["val/accuracy"] >= 0  # no push follows validation: a plain sleep, the weights kept
    assert gen.events == ["wake_up", "generate", "sleep"] and not gen.dropped


class ForwardTrainer(FakeTrainer):
    """The FakeTrainer's policy (-0.4 per completion token) as the training forward's own log-probs; counts passes."""

    logprob_calls = 0

    def logprobs(self, batch, *, temperature=1.0, reference=False):
        self.logprob_calls += 1
        return super().logprobs(batch, temperature=temperature, reference=reference)

    def train_step(self, batch, loss_fn, *, temperature=1.0):
        self.batches.append(batch)
        new = super().logprobs(batch).requires_grad_()
        loss, metrics = loss_fn(new, batch)
        loss.backward()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}


def test_old_logprobs_from_the_train_forward_skip_the_pass_and_give_the_same_step():
    results = {}
    for mode in ("recompute", "from_train_forward"):
        grpo = _grpo(mini_batch_size=16, old_logprobs=mode)
        trainer = ForwardTrainer()
        loop = GRPOLoop(FakeGenerator(), trainer, FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, PROBLEMS)
        results[mode] = (loop.run_step().metrics, trainer)
    (recomputed, t_re), (forward, t_fw) = results["recompute"], results["from_train_forward"]
    assert t_re.logprob_calls == 1 and t_fw.logprob_calls == 0
    assert [b.old_logprobs is None for b in t_fw.batches] == [True]
    # pi_old = this forward's log-probs = what the pass computed: same loss, ratios 1, same mismatch (exp 0.1)
    assert forward["train/loss"] == pytest.approx(recomputed["train/loss"], abs=1e-7)
    assert forward["train/ratio_mean"] == pytest.approx(recomputed["train/ratio_mean"]) == pytest.approx(1.0)
    assert forward["logprob_mismatch"] == pytest.approx(recomputed["logprob_mismatch"], rel=1e-6)
    assert recomputed["logprob_mismatch"] == pytest.approx(float(torch.exp(torch.tensor(0.1))), rel=1e-5)
    assert not any("gen_mismatch" in key for key in forward)


@pytest.mark.parametrize(
    ("options", "from_forward", "passes"),
    [
        ({"mini_batch_size": 16}, True, 0),  # one optimizer step per GRPO step: the pass is skipped
        ({"mini_batch_size": 8}, False, 1),  # two optimizer steps: the second needs the recomputed pi_old
        ({"mini_batch_size": 16, "epochs_per_step": 2}, False, 1),
        ({"mini_batch_size": 16, "old_logprobs": "recompute"}, False, 1),
    ],
)
def test_old_logprobs_auto_takes_the_train_forward_only_where_it_is_pi_old(options, from_forward, passes):
    grpo = _grpo(**options)
    assert grpo.pi_old_from_train_forward is from_forward
    assert GRPOConfig().old_logprobs == "auto"
    trainer = ForwardTrainer()
    loop = GRPOLoop(FakeGenerator(), trainer, FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, PROBLEMS)
    loop.run_step()
    assert trainer.logprob_calls == passes
    assert all((b.old_logprobs is None) is from_forward for b in trainer.batches)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mini_batch_size": 8}, "one optimizer step per GRPO step"),
        ({"mini_batch_size": 16, "epochs_per_step": 2}, "epochs_per_step 2"),
    ],
)
def test_old_logprobs_from_the_train_forward_only_where_they_are_pi_old(options, message):
    with pytest.raises(ValueError, match=message):
        _grpo(old_logprobs="from_train_forward", **options)


@pytest.mark.parametrize(("level", "cap"), [("token", 1.1), ("sequence", 1.2)])
def test_mismatch_correction_from_the_train_forward_equals_the_recomputed_one(level, cap):
    """With pi_old from the training forward, the loss computes the TIS weights itself: same weights, loss and
    mismatch metrics as the driver's from a log-probs pass (pi_old - pi_gen = 0.1 per token here)."""
    results = {}
    for mode in ("recompute", "from_train_forward"):
        grpo = _grpo(mini_batch_size=16, old_logprobs=mode,
                     mismatch_correction={"kind": "tis", "level": level, "cap": cap})  # fmt: skip
        trainer = ForwardTrainer()
        loop = GRPOLoop(FakeGenerator(), trainer, FakeEnv(), FakeEncoder(), grpo, ValidationConfig(), 0, PROBLEMS)
        results[mode] = (loop.run_step().metrics, trainer)
    (recomputed, _), (forward, t_fw) = results["recompute"], results["from_train_forward"]
    assert t_fw.logprob_calls == 0 and t_fw.batches[0].is_weights is None
    mismatch_keys = sorted(k for k in recomputed if k.startswith("mismatch/"))
    assert mismatch_keys and mismatch_keys == sorted(k for k in forward if k.startswith("mismatch/"))
    for key in [*mismatch_keys, "train/loss", "train/is_weight_mean", "logprob_mismatch"]:
        assert forward[key] == pytest.approx(recomputed[key], rel=1e-6, abs=1e-9), key
    assert recomputed["mismatch/clipped_frac"] > 0  # the cap binds somewhere: the comparison is not vacuous
    assert not any(k.startswith("train/is_sum_") for k in forward)
