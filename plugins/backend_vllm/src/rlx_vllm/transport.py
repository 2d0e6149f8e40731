"""How a weight bucket travels from the trainer to vLLM's workers: its packed layout, and the three transports.

A bucket is packed into one flat uint8 tensor (`pack_bucket`) described by plain (name, dtype, shape) metadata.
`direct` hands an in-process worker the tensors themselves; `rpc` sends the flat bytes through `collective_rpc`;
`ipc` sends only a small pickled handle (a CUDA IPC handle of the flat tensor, or the path of a shared-memory file
holding its bytes) and the worker reads the bucket from there, so the bytes never cross vLLM's message encoding.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlx.errors import ConfigError

NamedTensorList = list[tuple[str, torch.Tensor]]
BucketMetadata = list[tuple[str, str, list[int]]]
WeightSync = Literal["direct", "rpc", "ipc"]

# Each tensor starts at a multiple of this many bytes, so its view keeps its dtype's alignment (up to 16 bytes).
ALIGN_BYTES = 16
SHARED_FILE_PREFIX = "rlx-bucket-"


# ---------------------------------------------------------------------------------------------- choosing


def resolve_weight_sync(requested: str, *, in_process: bool, tensor_parallel_size: int) -> WeightSync:
    """The transport for `generator.weight_sync` (auto | direct | rpc | ipc); one ConfigError for a combination that
    cannot work.

    auto: direct when the only worker lives in this process (in_process=true, TP=1); ipc when the one worker lives
    in the engine core's process (in_process=false, TP=1); rpc with several workers (ipc is selectable there, but a
    trainer GPU's buffer opened from the other GPUs' workers has not been tried yet).
    """
    worker_here = in_process and tensor_parallel_size == 1
    where = f"in_process={str(in_process).lower()}, tensor_parallel_size={tensor_parallel_size}"
    if requested == "direct" and not worker_here:
        raise ConfigError(
            "generator.weight_sync=direct needs the worker in this process: in_process=true and "
            f"tensor_parallel_size=1 (got {where}); use weight_sync=ipc, rpc or auto"
        )
    if requested == "ipc" and worker_here:
        # A CUDA IPC handle cannot be opened by the process that exported it.
        raise ConfigError(
            f"generator.weight_sync=ipc shares buckets with workers in other processes, but with {where} the worker "
            "is in this process: use weight_sync=direct (or auto), or in_process=false"
        )
    if requested in ("direct", "rpc", "ipc"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ConfigError(f"generator.weight_sync={requested!r} is not one of auto, direct, rpc, ipc")
    if worker_here:
        return "direct"
    return "ipc" if tensor_parallel_size == 1 else "rpc"


# ---------------------------------------------------------------------------------------------- packing


def pack_bucket(bucket: Iterable[tuple[str, torch.Tensor]]) -> tuple[BucketMetadata, torch.Tensor]:
    """(name, tensor) pairs -> (name, dtype, shape) metadata and one flat uint8 tensor (on the tensors' device)."""
    bucket = list(bucket)
    parts = []
    for _, tensor in bucket:
        data = tensor.detach().contiguous().view(-1).view(torch.uint8)
        parts.append(data)
        if data.numel() % ALIGN_BYTES:
            parts.append(data.new_zeros(ALIGN_BYTES - data.numel() % ALIGN_BYTES))
    return bucket_metadata(bucket), torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def bucket_metadata(bucket: Iterable[tuple[str, torch.Tensor]]) -> BucketMetadata:
    """(name, dtype name, shape) per tensor: plain values that any RPC layer can carry."""
    return [(name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)) for name, tensor in bucket]


def _segment(dtype: str, shape: list[int]) -> tuple[int, int]:
    """(bytes of the tensor, bytes it occupies in a packed bucket, padding included)."""
    size = torch.Size(shape).numel() * _dtype(dtype).itemsize
    return size, -(-size // ALIGN_BYTES) * ALIGN_BYTES


def packed_size(metadata: BucketMetadata) -> int:
    return sum(_segment(dtype, shape)[1] for _, dtype, shape in metadata)


def unpack_bucket(metadata: BucketMetadata, flat: torch.Tensor) -> NamedTensorList:
    """Views into `flat` (uint8, packed by `pack_bucket`), one per tensor: no copy."""
    if flat.numel() != packed_size(metadata):
        raise ValueError(f"bucket has {flat.numel()} bytes, its metadata describes {packed_size(metadata)}")
    bucket, offset = [], 0
    for name, dtype, shape in metadata:
        size, padded = _segment(dtype, shape)
        bucket.append((name, flat[offset : offset + size].view(_dtype(dtype)).view(shape)))
        offset += padded
    return bucket


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


# ---------------------------------------------------------------------------------------------- ipc handles


@dataclass(frozen=True)
class SharedFileHandle:
    """A bucket's bytes in a file in shared memory (trainer tensors on the CPU); the sender deletes the file."""

    path: str
    nbytes: int


@dataclass(frozen=True)
class CudaIpcHandle:
    """A CUDA bucket exported with `torch.multiprocessing.reductions.reduce_tensor`, once per worker rank (torch pairs
    one export with one consumer's open and release), and the UUID of the GPU that holds it."""

    device_uuid: str
    exports: tuple[tuple[Any, ...], ...]  # rebuild_cuda_tensor arguments, indexed by worker rank


# reduce_tensor's arguments for rebuild_cuda_tensor: the position of the device index.
_REBUILD_DEVICE_ARG = 6


def shared_memory_dir() -> str:
    """/dev/shm where it exists (RAM-backed, no disk traffic), else the temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


@contextmanager
def shared_file_handle(flat: torch.Tensor, directory: str | None = None) -> Iterator[bytes]:
    """Write a CPU bucket to a uniquely named shared-memory file; yield its pickled handle; delete the file on exit,
    whether the receiver succeeded or raised."""
    fd, path = tempfile.mkstemp(prefix=SHARED_FILE_PREFIX, suffix=".bin", dir=directory or shared_memory_dir())
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(memoryview(flat.contiguous().numpy()))
        yield pickle.dumps(SharedFileHandle(path, flat.numel()))
    finally:
        os.unlink(path)


def cuda_ipc_handle(flat: torch.Tensor, workers: int) -> bytes:
    """The pickled handle of a CUDA bucket. The caller keeps `flat` alive until every worker has returned (the
    export does not hold the memory)."""
    from torch.multiprocessing.reductions import reduce_tensor

    # The pack kernels must have finished before another process reads the buffer. torch records an interprocess
    # event at the first export and the receiver waits on it when it opens the memory, but not when its process
    # still has that allocation open from an earlier bucket (same block of the caching allocator); so wait here.
    torch.cuda.current_stream(flat.device).synchronize()
    exports = tuple(reduce_tensor(flat)[1] for _ in range(workers))
    return pickle.dumps(CudaIpcHandle(device_uuid(flat.device), exports))


def device_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def open_bucket(handle: bytes, device: torch.device, rank: int = 0) -> torch.Tensor:
    """The worker side: the flat bucket a handle points at, as a uint8 tensor on `device` that the worker owns.

    Owned, not a view of the sender's memory: vLLM's layerwise reload keeps the tensors of layers not yet complete
    (a layer spanning buckets, attention layers until finish) past this call, while the sender frees or reuses its
    buffer as soon as the call returns. The handle is unpickled: it comes from the trainer process on this host.
    """
    opened = pickle.loads(handle)
    if isinstance(opened, SharedFileHandle):
        return _read_shared_file(opened).to(device)
    if isinstance(opened, CudaIpcHandle):
        return _open_cuda(opened, device, rank)
    raise TypeError(f"not a bucket handle: {type(opened).__name__}")


def _read_shared_file(handle: SharedFileHandle) -> torch.Tensor:
    flat = torch.empty(handle.nbytes, dtype=torch.uint8)
    with open(handle.path, "rb") as file:
        read = file.readinto(memoryview(flat.numpy()))
    if read != handle.nbytes:
        raise RuntimeError(f"bucket file {handle.path} holds {read} bytes, its handle says {handle.nbytes}")
    return flat


def _open_cuda(handle: CudaIpcHandle, device: torch.device, rank: int) -> torch.Tensor:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if rank >= len(handle.exports):
        raise RuntimeError(f"bucket handle was exported for {len(handle.exports)} worker(s); this is rank {rank}")
    args = list(handle.exports[rank])
    # The device index is the sender's; this process may number the GPUs differently (CUDA_VISIBLE_DEVICES).
    args[_REBUILD_DEVICE_ARG] = _local_index(handle.device_uuid, device)
    shared = rebuild_cuda_tensor(*args)
    owned = shared.to(device, copy=True)
    for used in {shared.device, owned.device}:
        torch.cuda.synchronize(used)  # our reads are done before the sender may reuse its buffer
    del shared  # releases the export: the sender's memory is free to go once its own reference drops
    return owned


def _local_index(uuid: str, device: torch.device) -> int:
    """This process's index of the GPU with `uuid` (the worker's own GPU first)."""
    if device.type == "cuda" and device_uuid(device) == uuid:
        return torch.cuda.current_device() if device.index is None else device.index
    for index in range(torch.cuda.device_count()):
        if device_uuid(torch.device("cuda", index)) == uuid:
            return index
    raise RuntimeError(
        f"the trainer's bucket is on GPU {uuid}, which this vLLM worker cannot see: use generator.weight_sync=rpc"
    )


# ---------------------------------------------------------------------------------------------- sending


class BucketSender:
    """Sends the buckets of one weight push to the workers by `rpc` or `ipc`; `used` names the transports taken.

    `call(method, args)` is `llm.collective_rpc` (synchronous: when it returns, every worker has loaded the bucket).
    With `ipc`, a bucket on a device that has no handle (neither CUDA nor CPU) travels by rpc.
    """

    def __init__(self, call: Callable[..., Any], weight_sync: WeightSync, *, workers: int = 1) -> None:
        if weight_sync == "direct":
            raise ValueError("BucketSender sends buckets to workers in other processes; direct needs none")
        self.call = call
        self.weight_sync = weight_sync
        self.workers = workers
        self.used: set[str] = set()
        self._cuda_exported = False

    def send(self, bucket: Iterable[tuple[str, torch.Tensor]]) -> None:
        metadata, flat = pack_bucket(bucket)
        if self.weight_sync == "ipc" and flat.device.type == "cuda":
            self._cuda_exported = True
            # `flat` stays referenced until the call returns, i.e. until every worker holds its own copy.
            self.call("rlx_load_bucket_ipc", args=(metadata, cuda_ipc_handle(flat, self.workers)))
            self.used.add("ipc")
        elif self.weight_sync == "ipc" and flat.device.type == "cpu":
            with shared_file_handle(flat) as handle:
                self.call("rlx_load_bucket_ipc", args=(metadata, handle))
            self.used.add("ipc")
        else:
            # Plain bytes + metadata: what vLLM's message encoding carries to worker processes.
            self.call("rlx_load_bucket", args=(metadata, flat.cpu().numpy().tobytes()))
            self.used.add("rpc")

    def close(self) -> None:
        """Let torch free the exported CUDA buffers whose receivers have released them."""
        if self._cuda_exported:
            torch.cuda.ipc_collect()

    @property
    def transport(self) -> str:
        """"ipc", "rpc", or "ipc+rpc" where buckets took both."""
        return "+".join(sorted(self.used)) or self.weight_sync
