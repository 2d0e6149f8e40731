"""The adapter's requests and payloads checked against sglang's own classes (no GPU needed, sglang needed).

Where the fake engine of test_sglang_adapter.py copies sglang's boundary, this module asks the installed sglang:
its SamplingParams accepts and verifies our sampling dicts, its ServerArgs has every key we pass, and its
deserializer + FlattenedTensorBucket rebuild our flattened payload in another process, as a TP worker does.
Skipped where sglang is not installed.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp

import pytest

pytest.importorskip("sglang", reason="sglang is not installed (pip install 'rlx-sglang[engine]')")

import torch  # noqa: E402

from rlx.interfaces import ModelSpec, SamplingParams  # noqa: E402
from rlx_sglang.generator import build_requests, engine_kwargs, sglang_flattened_payload, split_by_dtype  # noqa: E402
from rlx_sglang.plugin import SGLangConfig  # noqa: E402

pytestmark = pytest.mark.sglang


def test_sampling_dicts_are_valid_sglang_sampling_params():
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSamplingParams

    params = SamplingParams(n=2, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=7, stop_token_ids=(9,))
    for request in build_requests([[1, 2], [3]], params, seed_base=1)[1]:
        parsed = SGLangSamplingParams(**request)
        parsed.verify(vocab_size=100)
    greedy = SGLangSamplingParams(**build_requests([[1]], SamplingParams(temperature=0.0), seed_base=1)[1][0])
    assert greedy.top_k == 1  # sglang's greedy


def test_engine_kwargs_are_server_args_fields():
    from sglang.srt.server_args import ServerArgs

    fields = set(inspect.signature(ServerArgs).parameters)
    config = SGLangConfig(mem_fraction_static=0.5, attention_backend="triton", sampling_backend="pytorch")
    assert set(engine_kwargs(config, ModelSpec(path="/m"), seed=0)) <= fields


def _rebuild_in_worker(conn) -> None:
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket, FlattenedTensorMetadata

    data = MultiprocessingSerializer.deserialize(conn.recv())
    meta = [
        FlattenedTensorMetadata(
            name=m.name, shape=m.shape, dtype=m.dtype, start_idx=m.start_idx, end_idx=m.end_idx, numel=m.numel
        )
        for m in data["metadata"]
    ]
    bucket = FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=meta)
    conn.send([(name, tensor.clone()) for name, tensor in bucket.reconstruct_tensors()])


def test_flattened_payload_is_rebuilt_by_sglang_in_another_process():
    bucket = [("a", torch.randn(3, 4)), ("b", torch.arange(5, dtype=torch.bfloat16)), ("c", torch.randn(4, 6).t())]
    ctx = mp.get_context("spawn")
    for part in split_by_dtype(bucket):
        payloads = sglang_flattened_payload(part, tp_size=2); payload = payloads[0]
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=_rebuild_in_worker, args=(child,))
        worker.start()
        parent.send(payload)
        rebuilt = parent.recv()
        worker.join(timeout=60)
        assert [n for n, _ in rebuilt] == [n for n, _ in part]
        assert all(torch.equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(part, rebuilt, strict=True))
