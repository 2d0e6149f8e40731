"""The builtin components (`hf` generator, `fsdp` trainer, `guess` environment) and algorithm options, registered
through the same hooks as plugins.

Cheap to import: only pydantic Config models (and the pure-Python `guess` game); the implementations load when
selected.
"""

from __future__ import annotations

from rlx.builtin.configs import FSDPTrainerConfig, HFGeneratorConfig
from rlx.builtin.guess import GuessConfig
from rlx.plugins import hookimpl
from rlx.registry import ComponentRegistry


@hookimpl
def register_generators(registry: ComponentRegistry) -> None:
    registry.add(
        "hf",
        config=HFGeneratorConfig,
        factory="rlx.builtin.hf_generator:HFGenerator",
        description="transformers generate(), batched sampling with per-token logprobs",
    )


@hookimpl
def register_trainers(registry: ComponentRegistry) -> None:
    registry.add(
        "fsdp",
        config=FSDPTrainerConfig,
        factory="rlx.builtin.fsdp_trainer:FSDPTrainer",
        description="PyTorch FSDP2 (fully_shard) over torch.distributed; gloo on CPU, NCCL on GPU",
    )


@hookimpl
def register_algorithms(registry) -> None:  # noqa: ANN001 - rlx.algorithms.AlgorithmRegistry
    from rlx.grpo.builtins import register_builtin_algorithms  # torch: only when a run is resolved

    register_builtin_algorithms(registry)


@hookimpl
def register_commands(app) -> None:  # noqa: ANN001 - typer.Typer, imported lazily by the CLI
    from rlx.builtin.commands import add_commands

    add_commands(app)


@hookimpl
def register_environments(registry: ComponentRegistry) -> None:
    registry.add(
        "guess",
        config=GuessConfig,
        factory="rlx.builtin.guess:GuessEnvironment",
        description="toy multi-turn game: find a hidden number from higher/lower feedback (episodes)",
    )
