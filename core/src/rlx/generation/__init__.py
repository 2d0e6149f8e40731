"""What generator implementations (builtin and plugins) share: request checks, seeding, EOS discovery, sleep
tags (and the sleep before a full weight push), the weight-push guard and version stamps, and the streaming adapter
for batch-only generators."""

from rlx.generation.requests import SeedStream, check_params, check_request, check_requests, sample_seeds
from rlx.generation.state import (
    ReleasedMemory,
    WeightPushGuard,
    can_drop_weights_on_sleep,
    push_weights,
    push_weights_within,
    sleep_as_asked,
    sleep_before_weight_push,
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
    "can_drop_weights_on_sleep",
    "check_params",
    "check_request",
    "check_requests",
    "push_weights",
    "push_weights_within",
    "sample_seeds",
    "sleep_as_asked",
    "sleep_before_weight_push",
    "special_tokens",
    "stamp_version",
    "takes_version",
]
