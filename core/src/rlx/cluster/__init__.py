"""Where the components live. `local` (default): in this process, or one process per trainer rank on this
host. `ray`: actors on a Ray cluster (rlx.cluster.ray is the only module that imports ray).

Either way the loop receives plain objects that satisfy the Generator / Trainer / Environment contracts.
Builders get the chosen components (each with its own config), the `cluster:` section and a BuildContext:
never the whole run config.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlx.config import ClusterConfig
from rlx.interfaces import Environment, Generator, Trainer
from rlx.plan import Selection
from rlx.registry import BuildContext


@dataclass
class Components:
    generator: Generator
    trainer: Trainer
    env: Environment

    def close(self) -> None:
        for part in (self.generator, self.trainer, self.env):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's own error
                pass


def build_components(selection: Selection, cluster: ClusterConfig, ctx: BuildContext, env: Environment) -> Components:
    """Build generator and trainer where `cluster` says; `env` (already built, it resolved the model) scores here
    on `local` and stays the source of problems on `ray`."""
    if cluster.kind == "ray":
        from rlx.cluster.ray import build_ray_components

        return build_ray_components(selection, cluster, ctx, env)
    from rlx.cluster.local import LocalTrainerGroup

    trainer = LocalTrainerGroup(
        selection.trainer, ctx, world_size=cluster.trainer_workers, timeout_s=cluster.timeout_s
    )
    try:
        generator = selection.generator.build(ctx)
    except BaseException:
        trainer.close()
        raise
    return Components(generator=generator, trainer=trainer, env=env)
