"""rlx: post-training for LLMs, GRPO first. The public facade.

Plugins implement hooks with `@rlx.hookimpl`; components satisfy the protocols in `rlx.interfaces`.
"""

from rlx.errors import ComponentError, ConfigError, PluginError, RlxError
from rlx.interfaces import (
    Completion,
    Environment,
    Episode,
    EpisodeEnvironment,
    GenerationRequest,
    GenerationResult,
    Generator,
    ModelSpec,
    Observation,
    Problem,
    SamplingParams,
    Score,
    StreamingGenerator,
    TokenBatch,
    TrainBatch,
    Trainer,
    Turn,
)
from rlx.plugins import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "ComponentError",
    "ConfigError",
    "Environment",
    "Episode",
    "EpisodeEnvironment",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "ModelSpec",
    "Observation",
    "PluginError",
    "Problem",
    "RlxError",
    "SamplingParams",
    "Score",
    "StreamingGenerator",
    "TokenBatch",
    "TrainBatch",
    "Trainer",
    "Turn",
    "hookimpl",
]
