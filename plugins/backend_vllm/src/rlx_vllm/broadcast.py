"""The trainer's side of the NCCL weight path (trainer and vLLM on separate GPUs), after vLLM's rlhf.py example.

The trainer is rank 0 of a small NCCL group; the vLLM workers are ranks 1..TP. Per step::

    # generator process                              # trainer process (rank 0)
    generator.begin_broadcast_update()
    for each bucket:  (metadata sent by the cluster layer)
        fut = generator.receive_bucket(metadata)      metadata = sender.send(bucket)
        fut.result()
    generator.finish_broadcast_update()

Set up once: `fut = generator.init_weight_broadcast(addr, port, world_size)` while the trainer builds
`WeightBroadcaster(addr, port, world_size, device)`; then `fut.result()`. Needs CUDA and NCCL.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlx_vllm.worker_ext import BucketMetadata, bucket_metadata, pack_bucket


class WeightBroadcaster:
    """Rank 0 of the weight-broadcast group: sends each bucket as one flat byte buffer."""

    def __init__(self, master_address: str, master_port: int, world_size: int, device: torch.device | int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=0, world_size=world_size)
        self.device = torch.device("cuda", device) if isinstance(device, int) else device
        self.comm = PyNcclCommunicator(group, device=self.device)

    @staticmethod
    def metadata(bucket: Iterable[tuple[str, torch.Tensor]]) -> BucketMetadata:
        """What the receivers need before the bytes: (name, dtype, shape) per tensor, in packing order."""
        return bucket_metadata(bucket)

    def send(self, bucket: list[tuple[str, torch.Tensor]]) -> BucketMetadata:
        """Broadcast one bucket (packed on this GPU); returns its metadata."""
        metadata, flat = pack_bucket((name, tensor.to(self.device, non_blocking=True)) for name, tensor in bucket)
        self.comm.broadcast(flat, src=0, stream=torch.cuda.current_stream())
        torch.cuda.current_stream().synchronize()
        return metadata
