"""The trainer side of one weight push: rank 0 reads its full weights bucket by bucket while every other rank takes
part in the gathers; a `RayGeneratorPool` moves the buckets actor to actor, any other consumer iterates them here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rlx.cluster.broadcast import BroadcastSpec, BucketLayout
from rlx.cluster.ray.pool import ActorPool, Pending

DEFAULT_BUCKET_BYTES = 256 << 20
"""Weight-push bucket size: bounds what the object store (or a broadcast) holds per bucket in flight."""


class RayWeightStream(Iterator[tuple[str, torch.Tensor]]):
    """The trainer's current weights, read once (from `RayTrainerGroup.named_weights`).

    A generator pool pulls bucket references (`next_bucket`) or broadcast layouts (`next_broadcast_bucket`); any
    other consumer iterates (name, CPU tensor) pairs fetched to the driver. Whatever is left unread is drained
    (`close`) before the trainer's next call.
    """

    def __init__(self, trainer: ActorPool, root_ip: str) -> None:
        self.trainer = trainer
        self.root_ip = root_ip
        self._rank0 = trainer.actors[0]
        self._drains: list[Pending] | None = None
        self._done = False
        self._items: Iterator[tuple[str, torch.Tensor]] = iter(())

    def open(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES, *, on_device: bool = False) -> None:
        """Start the read on every rank (once): rank 0 buckets, the others drain."""
        if self._drains is not None:
            return
        self._drains = self.trainer.fan_out("drain_weights", only=range(1, len(self.trainer)))
        self.trainer.gather(
            self.trainer.fan_out("open_weight_stream", only=[0], max_bytes=bucket_bytes, on_device=on_device),
            "named_weights",
        )

    def next_bucket(self) -> tuple[dict[str, int] | None, Any]:
        """(sizes, object ref of the bucket) or (None, None) at the end."""
        self.open()
        if self._done:
            return None, None
        meta_ref, bucket_ref = self._rank0.next_bucket.options(num_returns=2).remote()
        (meta,) = self._gather_rank0(meta_ref)
        if meta is None:
            self._finish()
            return None, None
        return meta, bucket_ref

    def next_broadcast_bucket(self) -> BucketLayout | None:
        """Rank 0 packs the next bucket; its layout (for the receivers to allocate), or None at the end."""
        (layout,) = self._gather_rank0(self._rank0.next_broadcast_bucket.remote())
        if layout is None:
            self._finish()
        return layout

    def send_broadcast_bucket(self) -> Pending:
        """Rank 0 broadcasts the packed bucket; the caller gathers it together with the receivers."""
        return self._rank0.send_broadcast_bucket.remote(), self.trainer.labels[0]

    def broadcast_spec(self, world_size: int, backend: str, timeout_s: float, name: str) -> BroadcastSpec:
        """A new broadcast group rooted at rank 0 (its store on a port free now on rank 0's node)."""
        (port,) = self._gather_rank0(self._rank0.free_port.remote())
        return BroadcastSpec(self.root_ip, port, world_size, backend, timeout_s, name)  # type: ignore[arg-type]

    def join_broadcast(self, spec: BroadcastSpec) -> Pending:
        return self._rank0.join_weight_broadcast.remote(spec), self.trainer.labels[0]

    def _gather_rank0(self, ref: Any) -> list[Any]:
        return self.trainer.gather([(ref, self.trainer.labels[0])], "named_weights", watch=self._drains or ())

    def _finish(self) -> None:
        self._done = True
        drains, self._drains = self._drains or [], []
        self.trainer.gather(drains, "named_weights")

    def close(self) -> None:
        """Read to the end on rank 0 without sending anything (the gathers are collective: every rank must finish
        them)."""
        if self._drains is None or self._done:
            return
        self._gather_rank0(self._rank0.skip_weights.remote())
        self._finish()

    def __next__(self) -> tuple[str, torch.Tensor]:
        while True:
            item = next(self._items, None)
            if item is not None:
                return item
            meta, ref = self.next_bucket()
            if meta is None:
                raise StopIteration
            (bucket,) = self._gather_rank0(ref)
            self._items = iter(bucket)
