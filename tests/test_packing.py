"""rlx.packing: balanced splits, token-budget bins and the order-restoring inverse, against hand-worked cases."""

from __future__ import annotations

import random

import pytest
import torch

from rlx.cluster.base import shard_rows
from rlx.interfaces import TokenBatch
from rlx.packing import first_fit_decreasing, fits, inverse_permutation, karmarkar_karp, token_budget_bins


def loads(lengths: list[int], parts: list[list[int]]) -> list[int]:
    return [sum(lengths[r] for r in rows) for rows in parts]


def assert_partition(parts: list[list[int]], rows: int) -> None:
    """Every row exactly once, ascending inside each part."""
    assert sorted(r for part in parts for r in part) == list(range(rows))
    assert all(part == sorted(part) for part in parts)


def test_karmarkar_karp_beats_greedy() -> None:
    # greedy (longest first onto the lighter part): {8, 5, 4} = 17 vs {7, 6} = 13. Differencing: 8-7 -> 1,
    # 6-5 -> 1, then 4, 1, 1 -> 3, 1 -> 2: {7, 5, 4} = 16 vs {8, 6} = 14
    lengths = [8, 7, 6, 5, 4]
    parts = karmarkar_karp(lengths, 2)
    assert_partition(parts, 5)
    assert parts == [[1, 3, 4], [0, 2]] and loads(lengths, parts) == [16, 14]


def test_karmarkar_karp_three_ways_and_more_parts_than_rows() -> None:
    lengths = [5, 5, 4, 3, 3, 2, 2, 2, 1, 1]  # total 28 -> 10, 9, 9 is the best possible
    parts = karmarkar_karp(lengths, 3)
    assert_partition(parts, len(lengths))
    assert sorted(loads(lengths, parts)) == [9, 9, 10]
    few = karmarkar_karp([3, 1], 4)
    assert_partition(few, 2)
    assert sorted(len(p) for p in few) == [0, 0, 1, 1]
    assert karmarkar_karp([], 2) == [[], []]


def test_karmarkar_karp_balances_a_long_tailed_batch() -> None:
    rng = random.Random(0)
    lengths = [min(8192, int(rng.lognormvariate(7.8, 0.8))) + rng.randint(64, 320) for _ in range(64)]
    for parts in (2, 4, 8):
        split = karmarkar_karp(lengths, parts)
        assert_partition(split, 64)
        spread = max(loads(lengths, split)) - min(loads(lengths, split))
        assert spread <= 100, (parts, loads(lengths, split))  # of ~27k tokens per part at 8 parts; rows up to 8.5k


def test_first_fit_decreasing_respects_capacity_and_row_cap() -> None:
    lengths = [6, 5, 4, 3, 2, 2]
    bins = first_fit_decreasing(lengths, capacity=8)
    # longest first: 6 -> A; 5 -> B; 4 -> C; 3 -> B (8); 2 -> A (8); 2 -> C (6)
    assert bins == [[0, 4], [1, 3], [2, 5]]
    assert first_fit_decreasing(lengths, capacity=100, max_rows=2) == [[0, 1], [2, 3], [4, 5]]  # first fit
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([9], capacity=8)


def test_token_budget_bins_gives_exactly_count_bins_within_the_limits() -> None:
    lengths = [6, 5, 4, 3, 2, 2]  # 22 tokens
    for count in (3, 4, 5, 6, 8):
        bins = token_budget_bins(lengths, capacity=8, count=count)
        assert len(bins) == count
        assert_partition([b for b in bins if b], 6)
        assert fits(lengths, bins, 8, None)
        real = [b for b in bins if b]
        assert len(real) == min(count, 6) and bins[len(real) :] == [[]] * (count - len(real))  # empties last
    with pytest.raises(ValueError, match="3 bins of 8 tokens are needed"):
        token_budget_bins(lengths, capacity=8, count=2)
    assert token_budget_bins([], capacity=8, count=2) == [[], []]


def test_token_budget_bins_prefers_a_balanced_split_when_it_fits() -> None:
    lengths = [4, 4, 3, 3, 2, 2]  # 18 tokens in 2 bins of <= 10: balanced 9 / 9
    bins = token_budget_bins(lengths, capacity=10, count=2)
    assert sorted(loads(lengths, bins)) == [9, 9]


def test_inverse_permutation() -> None:
    assert inverse_permutation([2, 0, 1]) == [1, 2, 0]
    assert inverse_permutation([]) == []
    with pytest.raises(ValueError, match="not a permutation"):
        inverse_permutation([0, 0])


def batch_of_lengths(lengths: list[int], width: int = 10) -> TokenBatch:
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.arange(len(lengths))[:, None] * 100 + torch.arange(width)[None, :]
    return TokenBatch(input_ids=ids * mask, attention_mask=mask, completion_mask=mask.bool())


def test_shard_rows_balances_tokens_and_restores_the_row_order() -> None:
    batch = batch_of_lengths([9, 1, 1, 1, 8, 2])  # 22 tokens over 3 ranks: 9 alone is the best possible maximum
    split = shard_rows(batch, 3)
    assert split.rows == [[0], [4], [1, 2, 3, 5]]
    assert [int(s.attention_mask.sum()) for s in split.shards] == [9, 8, 5]
    contiguous = [int(batch.attention_mask[start : start + 2].sum()) for start in (0, 2, 4)]  # rows in order
    assert contiguous == [10, 2, 10]
    for shard, rows in zip(split.shards, split.rows, strict=True):
        torch.testing.assert_close(shard.input_ids, batch.input_ids[rows])
    # per-row results from each shard come back in the original order
    restored = split.restore([shard.input_ids * 2 for shard in split.shards])
    torch.testing.assert_close(restored, batch.input_ids * 2)
    empty = shard_rows(batch_of_lengths([3]), 2)
    assert sorted(len(s) for s in empty.shards) == [0, 1]
    torch.testing.assert_close(empty.restore([s.input_ids for s in empty.shards]), batch_of_lengths([3]).input_ids)
