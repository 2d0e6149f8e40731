"""The generator's sleep/wake order and weight-update paths, on a recording stand-in for `vllm.LLM`.

These paths need CUDA sleep mode or worker processes; the stand-in checks the calls the plugin makes, in order.
Needs torch, not vllm.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlx_vllm.generator import VLLMGenerator
from rlx_vllm.plugin import VLLMConfig
from rlx_vllm.worker_ext import pack_bucket, unpack_bucket


class RecordingLLM:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        if method == "rlx_reload_weights":
            names = [name for name, _ in args[0]]  # consume the stream, as the worker does
            self.calls.append((method, tuple(names)))
        elif method == "rlx_load_bucket":
            metadata, payload = args
            flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            self.calls.append((method, tuple(name for name, _ in unpack_bucket(metadata, flat))))
        else:
            self.calls.append((method,))
        return [None]


def _generator(direct: bool, sleep_enabled: bool = True, bucket_mb: int = 1) -> tuple[VLLMGenerator, RecordingLLM]:
    generator = object.__new__(VLLMGenerator)
    llm = RecordingLLM()
    generator.config = VLLMConfig(weight_bucket_mb=bucket_mb)
    generator.llm = llm  # type: ignore[assignment]
    generator.sleep_enabled = sleep_enabled
    generator.direct = direct
    generator._init_state()
    return generator, llm


def _weights(count: int = 3, mib: float = 0.75) -> list[tuple[str, torch.Tensor]]:
    numel = int(mib * 2**20) // 4
    return [(f"layer{i}.weight", torch.full((numel,), float(i))) for i in range(count)]


def test_wake_up_brings_weights_back_before_the_kv_cache() -> None:
    generator, llm = _generator(direct=True)
    generator.sleep()
    generator.sleep()  # twice is once
    generator.wake_up()
    assert llm.calls == [("sleep", 1), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert generator.asleep == set()


def test_update_while_asleep_wakes_only_the_weights() -> None:
    generator, llm = _generator(direct=True)
    generator.sleep()
    generator.update_weights(iter(_weights()))
    assert llm.calls[:2] == [("sleep", 1), ("wake_up", ("weights",))]
    assert ("wake_up", ("kv_cache",)) not in llm.calls
    assert generator.asleep == {"kv_cache"}
    generator.wake_up()
    assert llm.calls[-1] == ("wake_up", ("kv_cache",))


def test_without_sleep_mode_sleep_does_nothing() -> None:
    generator, llm = _generator(direct=True, sleep_enabled=False)
    generator.sleep()
    generator.wake_up()
    assert llm.calls == []


def test_direct_update_streams_once_then_resets_the_prefix_cache() -> None:
    generator, llm = _generator(direct=True)
    generator.update_weights(iter(_weights()))
    assert llm.calls == [
        ("rlx_reload_weights", ("layer0.weight", "layer1.weight", "layer2.weight")),
        ("reset_prefix_cache",),
    ]
    assert generator.last_update["weight_update/buckets"] == 3  # 0.75 MiB tensors, 1 MiB buckets
    assert generator.last_update["weight_update/megabytes"] == pytest.approx(2.25, rel=1e-3)


def test_rpc_update_sends_each_bucket_between_begin_and_finish() -> None:
    generator, llm = _generator(direct=False, bucket_mb=2)
    generator.update_weights(iter(_weights(count=3, mib=0.75)))
    assert [c[0] for c in llm.calls] == [
        "rlx_begin_reload",
        "rlx_load_bucket",
        "rlx_load_bucket",
        "rlx_finish_reload",
        "reset_prefix_cache",
    ]
    assert llm.calls[1][1] == ("layer0.weight", "layer1.weight") and llm.calls[2][1] == ("layer2.weight",)


def test_generate_refuses_to_run_with_weights_asleep() -> None:
    generator, _ = _generator(direct=True)
    generator.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        generator._ensure_awake()


def test_pack_and_unpack_keep_names_dtypes_shapes_and_values() -> None:
    bucket = [
        ("a", torch.arange(6, dtype=torch.float32).view(2, 3)),
        ("b", torch.tensor([1.5, -2.0], dtype=torch.bfloat16)),
        ("c", torch.tensor(7, dtype=torch.int64)),
        ("d", torch.arange(8, dtype=torch.float16).view(2, 4).t()),  # not contiguous
    ]
    metadata, flat = pack_bucket(bucket)
    assert flat.dtype == torch.uint8 and flat.numel() >= sum(t.numel() * t.element_size() for _, t in bucket)
    for (name, want), (got_name, got) in zip(bucket, unpack_bucket(metadata, flat), strict=True):
        assert got_name == name and got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bucket(metadata, flat[:-1])
