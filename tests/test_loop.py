"""The GRPO loop's own pieces: batching, data order, mini-batch loss weights (no model needed)."""

from __future__ import annotations

import torch

from rlx.data import DataCursor
from rlx.interfaces import Completion, Problem, Score
from rlx.loop import mini_batches
from rlx.rollout import Sample, collate


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
    mbs = mini_batches(batch, old_logprobs=torch.zeros(B, T), ref_logprobs=None, advantages=torch.arange(B).float(),
                       generator_logprobs=torch.zeros(B, T), size=4, loss_agg="token",
                       generator=torch.Generator().manual_seed(0))
    assert len(mbs) == 2
    seen = []
    for mb in mbs:
        assert torch.isclose(mb.loss_weights.sum(), torch.tensor(1.0))
        assert torch.equal(mb.loss_weights > 0, mb.completion_mask)
        seen += mb.advantages.tolist()
    assert sorted(seen) == list(range(B))
