"""Helpers shared by generator implementations (builtin and plugins)."""

from __future__ import annotations

from collections.abc import Sequence

from rlx.interfaces import SamplingParams


def check_request(prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
    """Raise a ValueError naming what is wrong with a generate() request (a generator's first line of defence)."""
    if params.n < 1 or params.max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={params.n}, max_new_tokens={params.max_new_tokens}")
    if params.temperature < 0 or not 0 < params.top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {params.temperature}, {params.top_p}")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
