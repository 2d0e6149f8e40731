"""Where the components live. `local` (default): in this process, or one process per trainer rank on this
host. `ray`: actors on a Ray cluster (rlx.cluster.ray is the only module that imports ray).

Either way the loop receives plain objects that satisfy the Generator / Trainer / Environment contracts.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlx.interfaces import Environment, Generator, ModelSpec, Trainer
from rlx.plan import Plan


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


def build_environment(plan: Plan) -> Environment:
    spec = plan.components["environment"]
    return spec.load_factory()(plan.component_configs["environment"], seed=plan.config.seed)


def build_components(plan: Plan, model: ModelSpec, env: Environment) -> Components:
    """Build generator and trainer where the config says (the environment is already built)."""
    if plan.config.cluster.kind == "ray":
        from rlx.cluster.ray import build_ray_components

        return build_ray_components(plan, model, env)
    from rlx.cluster.local import LocalTrainerGroup

    gen_spec, tr_spec = plan.components["generator"], plan.components["trainer"]
    trainer = LocalTrainerGroup(
        tr_spec.factory,
        plan.component_configs["trainer"],
        model=model,
        seed=plan.config.seed,
        with_reference=plan.config.grpo.kl_coef > 0,
        world_size=plan.config.cluster.trainer_workers,
    )
    generator = gen_spec.load_factory()(plan.component_configs["generator"], model=model, seed=plan.config.seed)
    return Components(generator=generator, trainer=trainer, env=env)
