"""What generator implementations (builtin and plugins) share: request checks, seeding, EOS discovery, sleep
tags, the weight-push guard and version stamps, and the streaming adapter for batch-only generators."""

from rlx.generation.requests import SeedStream, check_params, check_request, check_requests, sample_seeds
from rlx.generation.state import (
    ReleasedMemory,
    WeightPushGuard,
    push_weights,
    push_weights_within,
    stamp_version,
    takes_version,
)
from rlx.generation.streaming import BatchStreamingAdapter, as_streaming
from rlx.generation.tokens import SpecialTokens, special_tokens

__all__ = [
    "BatchStreamingAdapter",
    "ReleasedMemory",
    "SeedStream",
    "SpecialTokens",
    "WeightPushGuard",
    "as_streaming",
    "check_params",
    "check_request",
    "check_requests",
    "push_weights",
    "push_weights_within",
    "sample_seeds",
    "special_tokens",
    "stamp_version",
    "takes_version",
]
