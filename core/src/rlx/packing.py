"""Pure partitioning of sequences by token count: balanced splits (ranks) and token-budget bins (micro-batches).

Everything here works on plain lists of lengths and returns lists of row indices, so it is exact, deterministic
and testable without torch. Rows inside a part keep their original (ascending) order.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def _check_lengths(lengths: Sequence[int]) -> None:
    if any(length < 0 for length in lengths):
        raise ValueError(f"sequence lengths must be >= 0, got {min(lengths)}")


def karmarkar_karp(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split row indices into `parts` groups of near-equal total length (largest differencing method).

    Karmarkar and Karp's k-way differencing: every row starts as a partial solution with one non-empty group;
    the two partial solutions with the largest spread (max - min group sum) are merged by pairing the heaviest
    group of one with the lightest of the other, until one solution is left. Usually far better balanced than
    greedy. Groups are returned heaviest first; some are empty when rows < parts.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    _check_lengths(lengths)
    if not lengths:
        return [[] for _ in range(parts)]
    # a partial solution: (negative spread, tie-break, groups as (sum, rows) heaviest first)
    heap: list[tuple[int, int, list[tuple[int, list[int]]]]] = []
    for row, length in enumerate(lengths):
        groups = [(length, [row])] + [(0, []) for _ in range(parts - 1)]
        heapq.heappush(heap, (-length, row, groups))
    while len(heap) > 1:
        _, tie, first = heapq.heappop(heap)
        _, _, second = heapq.heappop(heap)
        merged = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(first, reversed(second), strict=True)]
        merged.sort(key=lambda group: (-group[0], min(group[1], default=len(lengths))))
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), tie, merged))
    return [sorted(rows) for _, rows in heap[0][2]]


def first_fit_decreasing(lengths: Sequence[int], capacity: int, max_rows: int | None = None) -> list[list[int]]:
    """Pack row indices into bins of total length <= `capacity` (and <= `max_rows` rows), longest first.

    Every length must be <= capacity. Few bins (first-fit decreasing uses at most 11/9 of the optimum + 1).
    """
    _check_lengths(lengths)
    if capacity < 1 or (max_rows is not None and max_rows < 1):
        raise ValueError(f"capacity and max_rows must be >= 1, got {capacity} and {max_rows}")
    if lengths and max(lengths) > capacity:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit a bin of {capacity}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: (-lengths[r], r)):
        for index, load in enumerate(loads):
            if load + lengths[row] <= capacity and (max_rows is None or len(bins[index]) < max_rows):
                bins[index].append(row)
                loads[index] += lengths[row]
                break
        else:
            bins.append([row])
            loads.append(lengths[row])
    return [sorted(rows) for rows in bins]


def fits(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int, max_rows: int | None) -> bool:
    """Whether every bin holds at most `capacity` tokens and `max_rows` rows."""
    return all(
        sum(lengths[r] for r in rows) <= capacity and (max_rows is None or len(rows) <= max_rows) for rows in bins
    )


def token_budget_bins(
    lengths: Sequence[int], capacity: int, count: int, max_rows: int | None = None
) -> list[list[int]]:
    """Exactly `count` bins of row indices, each within `capacity` tokens and `max_rows` rows.

    `count` must be at least `len(first_fit_decreasing(...))` (callers agree on it across ranks, which must all
    run the same number of micro-batches). Prefers a token-balanced split (Karmarkar-Karp) when it fits the
    limits; else first-fit decreasing bins, the heaviest multi-row bin split in two until there are `count`.
    Bins that cannot get a row (fewer rows than `count`) are empty and come last.
    """
    packed = first_fit_decreasing(lengths, capacity, max_rows)
    if count < len(packed):
        raise ValueError(f"{len(packed)} bins of {capacity} tokens are needed, but only {count} were allowed")
    balanced = [rows for rows in karmarkar_karp(lengths, count) if rows]
    bins = balanced if fits(lengths, balanced, capacity, max_rows) else packed
    while len(bins) < count:
        splittable = [rows for rows in bins if len(rows) > 1]
        if not splittable:
            break
        heaviest = max(splittable, key=lambda rows: sum(lengths[r] for r in rows))
        bins.remove(heaviest)
        halves = karmarkar_karp([lengths[r] for r in heaviest], 2)  # both non-empty for 2+ rows
        bins.extend([heaviest[i] for i in half] for half in halves)
    bins.sort(key=lambda rows: rows[0])  # deterministic: in order of each bin's first row
    return bins + [[] for _ in range(count - len(bins))]


def inverse_permutation(order: Sequence[int]) -> list[int]:
    """`inverse[order[i]] = i`: where each original row went, to put results back in the original order."""
    inverse = [-1] * len(order)
    for position, row in enumerate(order):
        if not 0 <= row < len(order) or inverse[row] != -1:
            raise ValueError(f"not a permutation of range({len(order)}): {list(order)}")
        inverse[row] = position
    return inverse
