"""Components on a Ray cluster (the ONLY rlx package that imports ray): trainer ranks, generator replicas and
environment scorers as actors behind plain Trainer / Generator / Environment objects; failures name the actor and
the step within `cluster.timeout_s`, and closing stops every actor. How to run it: docs/ray.md.

Modules: `pool` (the actor pool they are all built on), `placement`, `trainer` + `stream` (trainer ranks and their
weight stream), `generator` + `replica` (generator replicas and their side of a push), `environment`; this module
connects and builds. The weight broadcast group itself is `rlx.cluster.broadcast` (plain torch.distributed).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray

from rlx.cluster import Components
from rlx.cluster.ray.environment import RayEnvironmentPool
from rlx.cluster.ray.generator import RayGeneratorPool, WeightPush, replica_params
from rlx.cluster.ray.placement import Placement, weight_transport
from rlx.cluster.ray.pool import ActorPool, RayWorkerError, StepClock
from rlx.cluster.ray.stream import RayWeightStream
from rlx.cluster.ray.trainer import RayTrainerGroup
from rlx.config import ClusterConfig
from rlx.interfaces import Environment
from rlx.plan import Selection
from rlx.registry import BuildContext

log = logging.getLogger("rlx.cluster.ray")


@dataclass
class RayComponents(Components):
    """Components on Ray; `close` also removes the placement groups (and stops a Ray this run started)."""

    placement: Placement | None = None
    started_ray: bool = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.placement is not None:
                self.placement.remove()
            if self.started_ray and ray.is_initialized():
                ray.shutdown()


def connect(cfg: ClusterConfig) -> bool:
    """Connect to Ray: an existing session, `cluster.ray.address`, `RAY_ADDRESS`, or a new local Ray sized to hold
    this run. Returns whether this call started the connection (then closing the run shuts it down)."""
    if ray.is_initialized():
        return False
    address = cfg.ray.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, configure_logging=False)
    else:
        # logical CPUs: enough for the run's bundles even on a small machine (actors mostly wait in turn)
        cpus = max(os.cpu_count() or 1, math.ceil(Placement.needed_cpus(cfg)))
        log.info("starting a local Ray with %d logical CPUs", cpus)
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
    return True


def build_ray_components(selection: Selection, cfg: ClusterConfig, ctx: BuildContext, env: Environment) -> Components:
    """Connect, reserve the placement groups, start trainer ranks, generator replicas and scorers; on any failure
    (or Ctrl-C) while starting, nothing is left behind."""
    transport = weight_transport(cfg)  # a placement it cannot serve fails before Ray starts
    started = connect(cfg)
    placement: Placement | None = None
    built: list[RayTrainerGroup | RayGeneratorPool] = []
    try:
        placement = Placement(cfg)
        placement.check_feasible()
        placement.wait_ready(cfg.timeout_s)
        clock = StepClock()
        trainer = RayTrainerGroup(
            selection.trainer,
            ctx,
            world_size=cfg.trainer_workers,
            placement=placement,
            timeout_s=cfg.timeout_s,
            clock=clock,
        )
        built.append(trainer)
        generator = RayGeneratorPool(
            selection.generator,
            ctx,
            replicas=cfg.generator_replicas,
            placement=placement,
            timeout_s=cfg.timeout_s,
            transport=transport,
            clock=clock,
        )
        built.append(generator)
        scorers = RayEnvironmentPool(
            env,
            selection.environment,
            BuildContext(seed=ctx.seed),
            workers=cfg.generator_replicas,
            placement=placement,
            timeout_s=cfg.timeout_s,
            clock=clock,
        )
    except BaseException:
        # a failed (or interrupted) start leaves nothing behind: actors, groups, the Ray it started
        for part in built:
            part.close()
        if placement is not None:
            placement.remove()
        if started:
            ray.shutdown()
        raise
    log.info(
        "ray: %d trainer ranks, %d generator replicas, %d scorers (%s, %s; weights via %s)",
        cfg.trainer_workers,
        cfg.generator_replicas,
        len(scorers.actors),
        cfg.ray.placement,
        cfg.ray.strategy,
        transport,
    )
    log.info("ray placement: %s", "; ".join(trainer.placement() + generator.placement()))
    return RayComponents(generator=generator, trainer=trainer, env=scorers, placement=placement, started_ray=started)


__all__ = [
    "ActorPool",
    "Placement",
    "RayComponents",
    "RayEnvironmentPool",
    "RayGeneratorPool",
    "RayTrainerGroup",
    "RayWeightStream",
    "RayWorkerError",
    "StepClock",
    "WeightPush",
    "build_ray_components",
    "connect",
    "replica_params",
]
