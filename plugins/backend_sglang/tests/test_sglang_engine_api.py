"""The adapter's requests and payloads checked against sglang's own classes (no GPU needed, sglang needed).

Where the fake engine of test_sglang_adapter.py copies sglang's boundary, this module asks the installed sglang:
its SamplingParams accepts and verifies our sampling dicts, its ServerArgs has every key we pass, and its
deserializer + FlattenedTensorBucket rebuild our flattened payload as a TP worker does.
Skipped where sglang is not installed.
"""

from __future__ import annotations

import inspect

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


def test_flattened_payload_is_rebuilt_by_sglang():
    """Our payload through sglang's SafeUnpickler and the rebuild model_runner does (CPU tensors, one process)."""
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket, FlattenedTensorMetadata

    bucket = [("a", torch.randn(3, 4)), ("b", torch.arange(5, dtype=torch.bfloat16)), ("c", torch.randn(4, 6).t())]
    for part in split_by_dtype(bucket):
        payloads = sglang_flattened_payload(part, tp_size=2)
        assert len(payloads) == 2 and all(isinstance(p, str) for p in payloads)
        for payload in payloads:
            data = MultiprocessingSerializer.deserialize(payload)
            meta = [
                FlattenedTensorMetadata(
                    name=m.name, shape=m.shape, dtype=m.dtype, start_idx=m.start_idx, end_idx=m.end_idx, numel=m.numel
                )
                for m in data["metadata"]
            ]
            rebuilt = FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=meta)
            pairs = zip(part, rebuilt.reconstruct_tensors(), strict=True)
            assert all(n1 == n2 and a.dtype == b.dtype and torch.equal(a, b) for (n1, a), (n2, b) in pairs)
