"""Weight broadcast between separate pools: trainer rank 0 (the root) and the generator replicas form a process
group of their own, made from its own TCPStore (apart from the trainer's torch.distributed group), NCCL on CUDA and
gloo on CPU; each bucket travels as one packed byte buffer described by a `BucketLayout`. No ray here: any host
(Ray actors, or plain processes) can run a member.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

ALIGN_BYTES = 16
"""Each tensor starts at a multiple of this in the packed buffer, so it can be viewed as any dtype in place."""


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in a packed bucket."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class BucketLayout:
    """What a receiver needs to allocate a bucket and unpack it: every tensor's slot and the buffer's size."""

    slots: tuple[TensorSlot, ...]
    nbytes: int

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the tensors themselves (without the alignment padding)."""
        return sum(slot.nbytes for slot in self.slots)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def layout_of(bucket: list[tuple[str, torch.Tensor]]) -> BucketLayout:
    slots, offset = [], 0
    for name, tensor in bucket:
        slots.append(TensorSlot(name, tuple(tensor.shape), tensor.dtype, offset))
        offset = _aligned(offset + tensor.numel() * tensor.element_size())
    return BucketLayout(tuple(slots), offset)


def pack(bucket: list[tuple[str, torch.Tensor]]) -> tuple[BucketLayout, torch.Tensor]:
    """The bucket as one uint8 buffer (on the tensors' device) and its layout. Costs one bucket-sized copy."""
    layout = layout_of(bucket)
    device = bucket[0][1].device if bucket else torch.device("cpu")
    buffer = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
    for slot, (_, tensor) in zip(layout.slots, bucket, strict=True):
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        buffer[slot.offset : slot.offset + slot.nbytes].copy_(flat)
    return layout, buffer


def unpack(layout: BucketLayout, buffer: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `buffer` (no copy), in the sender's order."""
    return [
        (slot.name, buffer[slot.offset : slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape))
        for slot in layout.slots
    ]


@dataclass(frozen=True)
class BroadcastSpec:
    """How to join one broadcast group: rank 0 (the root) hosts the TCPStore at host:port; `name` prefixes the
    store's keys, so a group made again after a failed push never meets the old one's keys."""

    host: str
    port: int
    world_size: int
    backend: Literal["gloo", "nccl"]
    timeout_s: float
    name: str


class WeightBroadcast:
    """One member of a broadcast group (rank 0 sends, the others receive).

    Every collective is bounded by `spec.timeout_s` (gloo raises; NCCL's watchdog aborts the communicator), so a
    member whose peer died or hangs returns with an error; the group is then unusable and is made again.
    """

    def __init__(self, spec: BroadcastSpec, rank: int) -> None:
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        self.spec = spec
        self.rank = rank
        # every member connects to the root's store; the root's constructor waits for all of them (bounded)
        store = dist.TCPStore(spec.host, spec.port, spec.world_size, is_master=rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore(spec.name, store)
        if spec.backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._group = dist.ProcessGroupNCCL(prefixed, rank, spec.world_size, options)
        else:
            self.device = torch.device("cpu")
            self._group = dist.ProcessGroupGloo(prefixed, rank, spec.world_size, timeout)
        self._store = store  # the root serves the store for as long as the group lives

    def _broadcast(self, buffer: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self._group.broadcast([buffer], options).wait()
        if buffer.is_cuda:
            torch.cuda.current_stream().synchronize()

    def send(self, buffer: torch.Tensor) -> None:
        """Rank 0: broadcast a packed bucket (see `pack`)."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 of a weight broadcast sends")
        self._broadcast(buffer.to(self.device))

    def receive(self, layout: BucketLayout) -> list[tuple[str, torch.Tensor]]:
        """Ranks > 0: allocate the bucket on this member's device, take part in the broadcast, unpack (views)."""
        buffer = torch.empty(layout.nbytes, dtype=torch.uint8, device=self.device)
        self._broadcast(buffer)
        return unpack(layout, buffer)
