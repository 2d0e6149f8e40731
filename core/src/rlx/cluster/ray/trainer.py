"""Trainer ranks as Ray actors: `RayTrainerGroup` is ONE Trainer to the loop, the Ray twin of
`rlx.cluster.local.LocalTrainerGroup` (the same per-rank `TrainerWorker`, the same row split, rank 0's metrics)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rlx.cluster.base import RowShards, TrainerWorker, TrainerWorkerError, free_port, shard_rows
from rlx.cluster.broadcast import BroadcastSpec, BucketLayout, WeightBroadcast, pack
from rlx.cluster.ray.placement import Placement
from rlx.cluster.ray.pool import ActorPool, PoolBacked, StepClock, node_info
from rlx.cluster.ray.stream import RayWeightStream
from rlx.interfaces import PolicyLossFn, TokenBatch, TrainBatch
from rlx.plan import Choice
from rlx.registry import BuildContext
from rlx.weights import iter_buckets, tensor_bytes

log = logging.getLogger("rlx.cluster.ray")


class TrainerActor(TrainerWorker):
    """One trainer rank as a Ray actor: a TrainerWorker that also says where it runs and hands its weights out
    bucket by bucket (rank 0; the other ranks drain them: the gathers are collective)."""

    def __init__(self, choice: Choice, ctx: BuildContext) -> None:
        super().__init__(choice, ctx)
        self._buckets: Iterator[list[tuple[str, torch.Tensor]]] | None = None
        self._packed: torch.Tensor | None = None
        self._broadcast: WeightBroadcast | None = None

    def node(self) -> dict[str, Any]:
        return {**node_info(), "port": free_port()}

    def free_port(self) -> int:
        return free_port()

    def open_weight_stream(self, max_bytes: int, on_device: bool = False) -> None:
        """Rank 0: start reading the weights in buckets, as CPU copies or (for NCCL) where they are."""
        source = self._trainer().named_weights() if on_device else self.named_weights()
        self._buckets = iter_buckets(source, max_bytes)
        self._packed = None

    def _next(self) -> list[tuple[str, torch.Tensor]] | None:
        bucket = next(self._buckets, None) if self._buckets is not None else None
        if bucket is None:
            self._buckets = None
        return bucket

    def next_bucket(self) -> tuple[dict[str, int] | None, list[tuple[str, torch.Tensor]] | None]:
        """Rank 0: (sizes, bucket) of the next bucket, or (None, None) at the end (two returns: the driver reads only
        the small first one; the bucket goes from the object store straight to the replicas)."""
        bucket = self._next()
        if bucket is None:
            return None, None
        return {"tensors": len(bucket), "bytes": sum(tensor_bytes(t) for _, t in bucket)}, bucket

    def skip_weights(self) -> None:
        """Rank 0: read the rest of the stream and keep nothing (a consumer stopped early, or a push failed)."""
        while self._next() is not None:
            pass
        self._packed = None

    def drain_weights(self) -> int:
        """Ranks > 0: take part in every gather of named_weights, keep nothing."""
        return sum(1 for _ in self._trainer().named_weights())

    def join_weight_broadcast(self, spec: BroadcastSpec) -> None:
        self._broadcast = None  # a group made again replaces the old one (unusable after a failed push)
        self._broadcast = WeightBroadcast(spec, rank=0)

    def next_broadcast_bucket(self) -> BucketLayout | None:
        """Rank 0: pack the next bucket (held until `send_broadcast_bucket`); its layout, or None at the end."""
        bucket = self._next()
        if bucket is None:
            self._packed = None
            return None
        layout, self._packed = pack(bucket)
        return layout

    def send_broadcast_bucket(self) -> None:
        if self._broadcast is None or self._packed is None:
            raise RuntimeError("send_broadcast_bucket: join_weight_broadcast and next_broadcast_bucket come first")
        packed, self._packed = self._packed, None
        self._broadcast.send(packed)

    def close(self) -> None:
        self._broadcast = None
        super().close()


class RayTrainerGroup(PoolBacked):
    """A `Trainer` made of `world_size` trainer actors forming one torch.distributed group (gloo on CPU, NCCL on
    GPU): batches split by rows into token-balanced shards, rank 0's metrics.

    `nodes[rank]` / `ips[rank]` say where each rank runs. A failure of any rank (raise, death, timeout) kills the
    group and raises TrainerWorkerError naming the rank, the call and the step.
    """

    def __init__(
        self,
        choice: Choice,
        ctx: BuildContext,
        *,
        world_size: int,
        placement: Placement,
        timeout_s: float,
        clock: StepClock | None = None,
    ) -> None:
        self.world_size = world_size
        self._stream: RayWeightStream | None = None
        self.pool = ActorPool(
            TrainerActor,
            [(choice, ctx)] * world_size,
            [placement.trainer_options(rank) for rank in range(world_size)],
            labels=[f"trainer rank {rank}" for rank in range(world_size)],
            timeout_s=timeout_s,
            clock=clock or StepClock(),
            error=TrainerWorkerError,
            kill_on_failure=True,
        )
        try:
            # MASTER_ADDR is rank 0's node IP (not localhost): ranks on other nodes must reach it
            master_ip, master_port = self.ips[0], self.pool.infos[0]["port"]
            log.info("trainer ranks on nodes %s; torch.distributed master %s:%s", self.ips, master_ip, master_port)
            self._call_all("start", [(rank, world_size, master_ip, master_port) for rank in range(world_size)])
        except BaseException:  # a failed or interrupted start leaves no actor behind
            self.pool.kill()
            raise

    @property
    def ips(self) -> list[str]:
        return [info["ip"] for info in self.pool.infos]

    # ---------------------------------------------------------------------------------------- fan-out

    def _call_all(self, call: str, args: Sequence[tuple[Any, ...]] | None = None, **kwargs: Any) -> list[Any]:
        """`call` on every rank (after draining an unfinished weight stream: its gathers are collective)."""
        self._finish_stream()
        return self.pool.call_all(call, args, **kwargs)

    def _call_split(self, call: str, split: RowShards, *args: Any, **kwargs: Any) -> list[Any]:
        """`call` with rank r's shard of `split` (`rlx.cluster.base.shard_rows`: equal token loads, as the local
        cluster splits) as its first argument, then `args`; the answers come back by rank."""
        return self._call_all(call, [(shard, *args) for shard in split.shards], **kwargs)

    def _finish_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    # ---------------------------------------------------------------------------------------- Trainer

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32: each rank scores a token-balanced share of the rows; results come back in row order."""
        split = shard_rows(batch, self.world_size)
        return split.restore(self._call_split("logprobs", split, temperature=temperature, reference=reference))

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One optimizer step over the whole batch (token-balanced row shards); rank 0's metrics (all-reduced)."""
        split = shard_rows(batch, self.world_size)
        return self._call_split("train_step", split, loss_fn, temperature=temperature)[0]

    def named_weights(self) -> RayWeightStream:
        """Rank 0's full tensors, read once. A `RayGeneratorPool` moves them actor to actor, never through here."""
        self._finish_stream()
        self._stream = RayWeightStream(self.pool, self.ips[0])
        return self._stream

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shard under `path`: on several nodes it must be a shared filesystem."""
        self._call_all("save_checkpoint", [(path,)] * self.world_size)

    def load_checkpoint(self, path: str) -> None:
        self._call_all("load_checkpoint", [(path,)] * self.world_size)

    def export_hf(self, path: str) -> None:
        self._call_all("export_hf", [(path,)] * self.world_size)

    def close(self) -> None:
        self._stream = None  # not drained: the ranks are closed or killed anyway
        super().close()
