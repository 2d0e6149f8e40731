"""The bucket transports of `rlx_vllm.transport`: choosing one, and the CPU shared-memory handle read by a real
second process (what a vLLM worker in the engine core's process does). Needs torch, not vllm."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rlx.errors import ConfigError
from rlx_vllm.transport import (
    ALIGN_BYTES,
    SHARED_FILE_PREFIX,
    BucketSender,
    SharedFileHandle,
    pack_bucket,
    resolve_weight_sync,
    shared_file_handle,
    shared_memory_dir,
)

# The receiving process: opens the handle as a worker does, checks each view's alignment, saves what it read.
RECEIVER = """
import pickle, sys
import torch
from rlx_vllm.transport import ALIGN_BYTES, open_bucket, unpack_bucket

metadata, handle, out, fail = pickle.loads(sys.stdin.buffer.read())
flat = open_bucket(handle, torch.device("cpu"))
bucket = unpack_bucket(metadata, flat)
assert flat.data_ptr() % ALIGN_BYTES == 0, flat.data_ptr()
offsets = [tensor.data_ptr() - flat.data_ptr() for _, tensor in bucket]
torch.save({"bucket": [(name, tensor.clone()) for name, tensor in bucket], "offsets": offsets}, out)
if fail:
    raise RuntimeError("the worker failed to load the bucket")
"""


def _receive(metadata: Any, handle: bytes, out: Path, *, fail: bool = False) -> None:
    """Run the receiver in a fresh Python process (it shares nothing with this one but the file)."""
    subprocess.run(
        [sys.executable, "-c", RECEIVER],
        input=pickle.dumps((metadata, handle, str(out), fail)),
        check=True,
        capture_output=True,
        env=os.environ,
    )


def _bucket() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        ("w32", torch.randn(3, 5, generator=generator)),  # 60 bytes: the next tensor needs padding
        ("wbf16", torch.randn(7, generator=generator).to(torch.bfloat16)),
        ("wf16", torch.randn(2, 3, generator=generator).to(torch.float16).t()),  # not contiguous
        ("i64", torch.tensor([-(2**40), 3, 2**62])),
        ("i8", torch.tensor([-128, 0, 127], dtype=torch.int8)),
        ("flag", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5, dtype=torch.float64)),
    ]


@pytest.mark.parametrize(
    ("requested", "in_process", "tp", "expected"),
    [
        ("auto", True, 1, "direct"),
        ("auto", False, 1, "ipc"),
        ("auto", True, 2, "rpc"),
        ("auto", False, 2, "rpc"),
        ("direct", True, 1, "direct"),
        ("ipc", False, 1, "ipc"),
        ("ipc", True, 2, "ipc"),
        ("rpc", True, 1, "rpc"),
        ("rpc", False, 1, "rpc"),
    ],
)
def test_weight_sync_is_resolved_from_where_the_workers_run(requested: str, in_process: bool, tp: int, expected: str):
    assert resolve_weight_sync(requested, in_process=in_process, tensor_parallel_size=tp) == expected


def test_transports_that_cannot_reach_the_workers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="weight_sync=direct needs the worker in this process.*in_process=false"):
        resolve_weight_sync("direct", in_process=False, tensor_parallel_size=1)
    with pytest.raises(ConfigError, match="weight_sync=ipc shares buckets with workers in other processes"):
        resolve_weight_sync("ipc", in_process=True, tensor_parallel_size=1)


def test_a_second_process_reads_exactly_the_bucket_written(tmp_path: Path) -> None:
    bucket = _bucket()
    metadata, flat = pack_bucket(bucket)
    shm = tmp_path / "shm"
    shm.mkdir()
    with shared_file_handle(flat, directory=str(shm)) as h:
        handle = pickle.loads(h)
        assert isinstance(handle, SharedFileHandle) and handle.nbytes == flat.numel()
        assert Path(handle.path).name.startswith(SHARED_FILE_PREFIX) and Path(handle.path).stat().st_size == flat.numel()
        _receive(metadata, h, tmp_path / "got.pt")
    assert list(shm.iterdir()) == []  # the sender deleted the file
    got = torch.load(tmp_path / "got.pt")
    for (name, want), (got_name, tensor) in zip(bucket, got["bucket"], strict=True):
        assert got_name == name and tensor.dtype == want.dtype and tensor.shape == want.shape
        assert torch.equal(tensor, want), name
    assert all(offset % ALIGN_BYTES == 0 for offset in got["offsets"]) and got["offsets"][1] == 64


def test_the_file_is_gone_when_the_receiver_raises(tmp_path: Path) -> None:
    """Through the sender a push uses: the worker fails, the rpc raises, the sender still deletes the file."""
    paths: list[str] = []

    def failing_rpc(method: str, args: tuple) -> list[None]:
        assert method == "rlx_load_bucket_ipc"
        metadata, handle = args
        paths.append(pickle.loads(handle).path)
        assert os.path.exists(paths[-1])
        _receive(metadata, handle, tmp_path / "got.pt", fail=True)
        return [None]

    sender = BucketSender(failing_rpc, "ipc")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        sender.send(_bucket())
    assert b"the worker failed to load the bucket" in failed.value.stderr
    assert (tmp_path / "got.pt").exists()  # the receiver did read the file before failing
    (path,) = paths
    assert Path(path).parent == Path(shared_memory_dir()) and not os.path.exists(path)
    sender.close()  # nothing was exported over CUDA: nothing to collect, no CUDA needed


def test_rpc_sends_the_bytes() -> None:
    sent: list[tuple[str, Any]] = []
    sender = BucketSender(lambda method, args: sent.append((method, args)), "rpc")
    metadata, flat = pack_bucket(_bucket())
    sender.send(_bucket())
    ((method, (sent_metadata, payload)),) = sent
    assert method == "rlx_load_bucket" and sent_metadata == metadata and payload == flat.numpy().tobytes()
    assert sender.transport == "rpc"
