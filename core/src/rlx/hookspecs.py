"""Every rlx hook, in one place. Plugins implement these with `@rlx.hookimpl`.

All hooks are "collector" hooks: the plugin calls `registry.add(...)`; the core owns the name -> component
map, detects clashes and imports nothing until a component is selected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from rlx.algorithms import AlgorithmRegistry
    from rlx.registry import ComponentRegistry

PROJECT = "rlx"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def register_generators(registry: ComponentRegistry) -> None:
    """Register generator components: `registry.add(name, config=Model, factory="mod:attr")`.

    The factory is called as `factory(config, *, model: ModelSpec, seed: int)` and returns a `Generator`.
    """


@hookspec
def register_trainers(registry: ComponentRegistry) -> None:
    """Register trainer components: `registry.add(name, config=Model, factory="mod:attr")`.

    The factory is called as `factory(config, *, model: ModelSpec, seed: int, with_reference: bool)`
    in every trainer process and returns a `Trainer`.
    """


@hookspec
def register_environments(registry: ComponentRegistry) -> None:
    """Register environment components: `registry.add(name, config=Model, factory="mod:attr")`.

    The factory is called as `factory(config, *, seed: int)` and returns an `Environment`.
    """


@hookspec
def register_algorithms(registry: AlgorithmRegistry) -> None:
    """Register algorithm options by name: `registry.add_advantage_estimator(name, fn)`, `add_policy_loss`,
    `add_loss_aggregation`, `add_mismatch_correction` (signatures in `rlx.algorithms`).

    Selected by `grpo.advantage`, `grpo.policy_loss`, `grpo.loss_agg`, `grpo.mismatch_correction.kind`.
    Collected only when a run is resolved (not by `rlx plugins list`), so the functions may import torch.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the `rlx` command line (`@app.command()` on the given Typer app)."""
