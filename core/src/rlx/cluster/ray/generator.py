"""Generator replicas as Ray actors: `RayGeneratorPool` is ONE Generator to the loop (prompts split in contiguous
blocks, replica r seeded apart) and pushes the trainer's weights to every replica, by the object store or by
broadcast. A push that did not complete leaves the pool refusing to generate until a later push completes."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from rlx.cluster.ray.placement import Placement, Transport
from rlx.cluster.ray.pool import ActorPool, PoolBacked, StepClock
from rlx.cluster.ray.replica import GeneratorActor
from rlx.cluster.ray.stream import DEFAULT_BUCKET_BYTES, RayWeightStream
from rlx.errors import WeightPushIncompleteError
from rlx.generation import stamp_version
from rlx.interfaces import Completion, NamedTensors, SamplingParams
from rlx.plan import Choice
from rlx.registry import BuildContext
from rlx.weights import iter_buckets, tensor_bytes

log = logging.getLogger("rlx.cluster.ray")

REPLICA_SEED_STRIDE = 10_007
"""Replica r is built with seed `seed + r * stride` and samples with `params.seed + r * stride` (replica 0: as given)."""

PUSH = "update_weights"


@dataclass(frozen=True)
class WeightPush:
    """How the last completed weight push went: wall time on the driver, what moved, by which transport."""

    version: int | None
    seconds: float
    bytes: int
    buckets: int
    tensors: int
    transport: Transport
    load_seconds: float = 0.0  # the slowest replica's update_weights, begin to end


def replica_params(params: SamplingParams, replica: int) -> SamplingParams:
    """Replica 0 samples with `params` as given (a 1-replica run equals a local run); replica r's seed is offset."""
    if replica == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + replica * REPLICA_SEED_STRIDE)


class RayGeneratorPool(PoolBacked):
    """A `Generator` made of data-parallel replicas of one generator plugin, each a Ray actor.

    `generate` splits the prompts into contiguous blocks (the first replicas take one more), each replica samples
    its block with its own seed (`replica_params`), and the groups come back in prompt order: with one replica
    they equal a local run's. `update_weights(weights, version=...)` pushes bucket by bucket; `version` (the trainer
    step the weights come from) names the step in messages and logs and reaches replicas whose generator takes it.
    """

    def __init__(
        self,
        choice: Choice,
        ctx: BuildContext,
        *,
        replicas: int,
        placement: Placement,
        timeout_s: float,
        transport: Transport = "object-store",
        clock: StepClock | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        self.transport: Transport = transport
        self.bucket_bytes = bucket_bytes
        self.last_push: WeightPush | None = None
        self.clock = clock or StepClock()
        self._failed_push: str | None = None  # what the last push was and why it did not complete
        self._broadcast_epoch = 0  # groups made so far; a failed push makes the next one make a new group
        self._broadcast_ready = False
        self._can_drop_weights: bool | None = None  # every replica's can_drop_weights_on_sleep, once asked
        labels = [f"generator replica {r}" for r in range(replicas)]
        self.pool = ActorPool(
            GeneratorActor,
            [
                (choice, dataclasses.replace(ctx, seed=ctx.seed + r * REPLICA_SEED_STRIDE), labels[r])
                for r in range(replicas)
            ],
            [placement.generator_options(r) for r in range(replicas)],
            labels=labels,
            timeout_s=timeout_s,
            clock=self.clock,
        )

    # ---------------------------------------------------------------------------------------- Generator

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Completions in prompt order; those whose replica did not say which version sampled them carry the
        version of the last completed push."""
        if self._failed_push is not None:
            raise WeightPushIncompleteError(
                f"the Ray generator pool refuses to serve: {self._failed_push}; replicas may hold a mix of old and "
                "new weights. A later push that completes clears this"
            )
        groups = self.pool.call_blocks(
            "generate", len(prompts), lambda r, rows: ([list(p) for p in prompts[rows]], replica_params(params, r))
        )
        return stamp_version(groups, self.clock.version)

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Push new weights to every replica within one deadline (`cluster.timeout_s`): from trainer rank 0 straight
        to the replicas when `weights` is its stream (broadcast or object store, by `transport`), else bucketed from
        this process through the object store. A failure names the replica (or rank) and the step; the pool then
        refuses to generate until a later push completes."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.pool.timeout_s
        stats = {"bytes": 0, "buckets": 0, "tensors": 0}
        broadcast = isinstance(weights, RayWeightStream) and self.transport != "object-store"
        try:
            self.pool.gather(self.pool.fan_out("begin_update", version=version), PUSH, deadline=deadline, breaks=False)
            if broadcast:
                self._push_broadcast(weights, stats, deadline)  # type: ignore[arg-type]
            else:
                self._push_object_store(weights, stats, deadline)
            load_seconds = max(self.pool.gather(self.pool.fan_out("end_update"), PUSH, deadline=deadline, breaks=False))
        except BaseException as exc:
            name = "an unversioned weight push" if version is None else f"the weight push of version {version}"
            self._failed_push = f"{name} did not complete ({type(exc).__name__}: {exc})"
            self._broadcast_ready = False  # a broken collective cannot be reused: make a new group next time
            raise
        self._failed_push = None
        self.clock.pushed(version)
        transport = self.transport if broadcast else "object-store"
        self.last_push = WeightPush(
            version,
            time.perf_counter() - t0,
            stats["bytes"],
            stats["buckets"],
            stats["tensors"],
            transport,
            load_seconds,
        )
        log.info(
            "weights of %s pushed via %s: %.1f MB in %d buckets to %d replicas, %.3f s; now serving %s",
            "an unversioned step" if version is None else f"step {version}",
            transport,
            stats["bytes"] / 1e6,
            stats["buckets"],
            len(self.pool),
            self.last_push.seconds,
            self.clock.where().removeprefix("at "),
        )

    def _push_object_store(self, weights: NamedTensors, stats: dict[str, int], deadline: float) -> None:
        if isinstance(weights, RayWeightStream):
            weights.open(self.bucket_bytes)
            source = weights.next_bucket
        else:
            source = self._driver_buckets(weights)
        in_flight: list[Any] = []
        while True:
            meta, ref = source()
            if meta is None:
                break
            loads = self.pool.fan_out("load_bucket", [(ref,)] * len(self.pool))
            del ref  # the replicas hold it now; freed once every replica has loaded it
            # at most two buckets in flight: rank 0 gathers the next while the replicas load this one
            if in_flight:
                self.pool.gather(in_flight, PUSH, deadline=deadline, breaks=False)
            in_flight = loads
            stats["bytes"] += meta["bytes"]
            stats["tensors"] += meta["tensors"]
            stats["buckets"] += 1
        if in_flight:
            self.pool.gather(in_flight, PUSH, deadline=deadline, breaks=False)

    def _driver_buckets(self, weights: NamedTensors) -> Callable[[], tuple[dict[str, int] | None, Any]]:
        buckets = iter_buckets(weights, self.bucket_bytes)

        def next_bucket() -> tuple[dict[str, int] | None, Any]:
            bucket = next(buckets, None)
            if bucket is None:
                return None, None
            bucket = [(name, tensor.detach().cpu()) for name, tensor in bucket]
            meta = {"tensors": len(bucket), "bytes": sum(tensor_bytes(t) for _, t in bucket)}
            return meta, ray.put(bucket)

        return next_bucket

    def _push_broadcast(self, weights: RayWeightStream, stats: dict[str, int], deadline: float) -> None:
        """Broadcast from trainer rank 0 (rank 0 of the group) to every replica (rank 1 + r), bucket by bucket."""
        if not self._broadcast_ready:
            self._broadcast_epoch += 1
            # every collective of the group is bounded like a remote call, so a member never waits past a push
            spec = weights.broadcast_spec(
                len(self.pool) + 1, self.transport, self.pool.timeout_s, name=f"rlx-weights-{self._broadcast_epoch}"
            )
            joins = self.pool.fan_out("join_weight_broadcast", [(spec, r + 1) for r in range(len(self.pool))])
            self.pool.gather([*joins, weights.join_broadcast(spec)], PUSH, deadline=deadline, breaks=False)
            self._broadcast_ready = True
        weights.open(self.bucket_bytes, on_device=self.transport == "nccl")
        while (layout := weights.next_broadcast_bucket()) is not None:
            # receivers first: when one died, its death is the cause the message names first
            receives = self.pool.fan_out("receive_broadcast_bucket", [(layout,)] * len(self.pool))
            self.pool.gather([*receives, weights.send_broadcast_bucket()], PUSH, deadline=deadline, breaks=False)
            stats["tensors"] += len(layout.slots)
            stats["bytes"] += layout.tensor_bytes
            stats["buckets"] += 1

    @property
    def can_drop_weights_on_sleep(self) -> bool:
        """True where every replica's generator can discard its weights at sleep (asked once)."""
        if self._can_drop_weights is None:
            self._can_drop_weights = all(self.pool.call_all("can_drop_weights_on_sleep"))
        return self._can_drop_weights

    def sleep(self, drop_weights: bool = False) -> None:
        self.pool.call_all("sleep", drop_weights=drop_weights)

    def wake_up(self) -> None:
        self.pool.call_all("wake_up")
