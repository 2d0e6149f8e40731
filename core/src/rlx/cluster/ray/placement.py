"""Where a run's actors go: its placement groups, the options each actor is created with, and the checks that the
cluster can hold them and that the weight transport fits the placement (failing at once, with the numbers)."""

from __future__ import annotations

from typing import Any, Literal

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlx.cluster.ray.pool import RayWorkerError
from rlx.config import ClusterConfig
from rlx.errors import ConfigError

Transport = Literal["object-store", "gloo", "nccl"]


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    # Ray rejects empty bundles: a worker asking for nothing still reserves a sliver of CPU
    out = {"CPU": cpus if cpus > 0 else 0.01}
    if gpus > 0:
        out["GPU"] = gpus
    return out


def _env_cpus(cfg: ClusterConfig) -> float:
    return min(1.0, max(cfg.ray.cpus_per_worker, 0.01))


def weight_transport(cfg: ClusterConfig) -> Transport:
    """How trainer rank 0's weights reach the replicas (`cluster.ray.weight_transport`): through the object store,
    or broadcast in a process group of rank 0 and the replicas (NCCL when the workers have GPUs, else gloo).
    `auto` broadcasts over NCCL for separate GPU pools and uses the object store otherwise."""
    ray_cfg = cfg.ray
    on_gpus = ray_cfg.gpus_per_worker > 0
    if ray_cfg.weight_transport == "object-store":
        return "object-store"
    if ray_cfg.weight_transport == "auto":
        return "nccl" if on_gpus and ray_cfg.placement == "separate" else "object-store"
    if on_gpus and ray_cfg.placement == "colocated":
        raise ConfigError(
            "cluster.ray.weight_transport=broadcast needs cluster.ray.placement=separate on GPUs: colocated, trainer "
            "rank 0 and generator replica 0 share one GPU, and NCCL cannot put two ranks of a group on one device. "
            "Use placement=separate, or weight_transport=auto / object-store"
        )
    return "nccl" if on_gpus else "gloo"


class Placement:
    """The placement groups of one run and the options each actor is created with.

    colocated: one group of max(trainer_workers, generator_replicas) bundles; trainer rank i and generator
    replica i share bundle i (half of its CPUs and GPUs each, so on GPU they share the device and take turns:
    the loop puts the generator to sleep while the trainer trains). separate: one group per pool.
    Environment scorers are plain actors spread over the cluster (scoring is CPU work, outside the groups).
    """

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        bundle = _bundle(cfg.ray.cpus_per_worker, cfg.ray.gpus_per_worker)
        self.groups: list[PlacementGroup] = []
        self.removed = False
        if cfg.ray.placement == "colocated":
            count = max(cfg.trainer_workers, cfg.generator_replicas)
            shared = placement_group([bundle] * count, strategy=cfg.ray.strategy)
            self.groups.append(shared)
            self._trainer_group, self._generator_group, self._share = shared, shared, 0.5
        else:
            self._trainer_group = placement_group([bundle] * cfg.trainer_workers, strategy=cfg.ray.strategy)
            self._generator_group = placement_group([bundle] * cfg.generator_replicas, strategy=cfg.ray.strategy)
            self.groups += [self._trainer_group, self._generator_group]
            self._share = 1.0
        self.bundles = [dict(b) for g in self.groups for b in g.bundle_specs]

    @staticmethod
    def needed_cpus(cfg: ClusterConfig) -> float:
        """Logical CPUs the run reserves (placement groups plus environment scorers)."""
        bundles = (
            max(cfg.trainer_workers, cfg.generator_replicas)
            if cfg.ray.placement == "colocated"
            else cfg.trainer_workers + cfg.generator_replicas
        )
        return bundles * _bundle(cfg.ray.cpus_per_worker, 0)["CPU"] + cfg.generator_replicas * _env_cpus(cfg)

    def check_feasible(self) -> None:
        """Fail at once when the cluster can never hold the groups (instead of waiting for the timeout)."""
        total = ray.cluster_resources()
        need_cpu = sum(b.get("CPU", 0) for b in self.bundles)
        need_gpu = sum(b.get("GPU", 0) for b in self.bundles)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        problems = []
        if need_cpu > total.get("CPU", 0) + 1e-9:
            problems.append(f"{need_cpu:g} CPUs (cluster has {total.get('CPU', 0):g})")
        if need_gpu > total.get("GPU", 0) + 1e-9:
            problems.append(f"{need_gpu:g} GPUs (cluster has {total.get('GPU', 0):g})")
        if self.cfg.ray.strategy == "STRICT_SPREAD":
            widest = max(len(g.bundle_specs) for g in self.groups)
            if widest > nodes:
                problems.append(f"{widest} nodes for STRICT_SPREAD (cluster has {nodes} alive)")
        if problems:
            raise ConfigError(
                "the Ray cluster cannot hold this run's placement: it needs "
                + "; ".join(problems)
                + ". Lower cluster.trainer_workers / generator_replicas / ray.cpus_per_worker / ray.gpus_per_worker, "
                f"or change cluster.ray.strategy (now {self.cfg.ray.strategy}, placement {self.cfg.ray.placement})"
            )

    def wait_ready(self, timeout_s: float) -> None:
        try:
            ray.get([g.ready() for g in self.groups], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RayWorkerError(
                f"placement groups ({self.cfg.ray.strategy}, bundles {self.bundles}) were not granted within "
                f"cluster.timeout_s={timeout_s:g} s; available now: {ray.available_resources()}"
            ) from None

    def _options(self, group: PlacementGroup, index: int) -> dict[str, Any]:
        return {
            "num_cpus": max(self.cfg.ray.cpus_per_worker, 0.01) * self._share,
            "num_gpus": self.cfg.ray.gpus_per_worker * self._share,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index
            ),
        }

    def trainer_options(self, rank: int) -> dict[str, Any]:
        return self._options(self._trainer_group, rank)

    def generator_options(self, replica: int) -> dict[str, Any]:
        return self._options(self._generator_group, replica)

    def environment_options(self) -> dict[str, Any]:
        return {"num_cpus": _env_cpus(self.cfg), "scheduling_strategy": "SPREAD"}

    def remove(self) -> None:
        """Free the reserved resources (once; `groups` keeps the handles for inspection)."""
        if self.removed:
            return
        self.removed = True
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:  # noqa: BLE001 - already gone (cluster shut down): nothing to free
                pass
