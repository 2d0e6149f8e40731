"""Request checks and seeding shared by every generator: one error per malformed request, and seeds for calls
that set none, reproducible from the run seed without touching the process-global RNGs."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from rlx.errors import GenerationRequestError
from rlx.interfaces import GenerationRequest, SamplingParams


def check_params(params: SamplingParams, *, where: str = "") -> None:
    """Raise a GenerationRequestError (a ValueError) naming the first bad field of `params`."""
    if params.n < 1:
        raise GenerationRequestError(f"{where}SamplingParams.n must be >= 1, got {params.n}")
    if params.max_new_tokens < 1:
        raise GenerationRequestError(f"{where}SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise GenerationRequestError(f"{where}SamplingParams.temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise GenerationRequestError(f"{where}SamplingParams.top_p must be in (0, 1], got {params.top_p}")


def check_request(prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
    """Raise a GenerationRequestError naming what is wrong with a generate() call (a generator's first line of
    defence): bad sampling settings or an empty prompt."""
    check_params(params)
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise GenerationRequestError(f"prompt {i} is empty: every prompt needs at least one token")


def check_requests(requests: Sequence[GenerationRequest], *, pending: Collection[str] = ()) -> None:
    """Check a `submit()` batch as a whole: each request well-formed, ids unique among themselves and `pending`."""
    seen: set[str] = set()
    for position, request in enumerate(requests):
        if not isinstance(request, GenerationRequest):
            raise GenerationRequestError(
                f"submit() takes rlx.interfaces.GenerationRequest objects; item {position} is a "
                f"{type(request).__name__}"
            )
        if request.id in seen or request.id in pending:
            raise GenerationRequestError(
                f"request id {request.id!r} is already pending: ids must be unique among requests not yet collected"
            )
        seen.add(request.id)
        check_params(request.params, where=f"request {request.id!r}: ")
        if not request.prompt_ids:
            raise GenerationRequestError(f"request {request.id!r} has an empty prompt: it needs at least one token")


class SeedStream:
    """Seeds for calls whose `params.seed` is None, drawn from a private stream seeded by the run seed: a run is
    reproducible from its seed, and the process-global RNGs (the trainer's, when colocated) are never touched."""

    def __init__(self, seed: int, *, modulus: int = 2**62) -> None:
        self._random = random.Random(seed)
        self.modulus = modulus

    def next(self) -> int:
        return self._random.randrange(self.modulus)

    def resolve(self, params: SamplingParams) -> int:
        """`params.seed` when set, else the stream's next seed."""
        return params.seed if params.seed is not None else self.next()


def sample_seeds(base: int, count: int, *, modulus: int = 2**31 - 1) -> list[int]:
    """`count` distinct seeds derived from `base`, one per sample (prompt-major), for engines that take one seed per
    request: the n samples of a prompt would be identical with equal seeds. Kept below 2**31 (int32 seeds)."""
    return [(base * 1_000_003 + k) % modulus for k in range(count)]
