"""The trtllm adapter's own logic, tested at its narrowest boundary to the engine: the `LLM` object and the
`SamplingParams` class it is handed.

`trtllm_fake` mimics tensorrt_llm's LLM.generate / RequestOutput / CompletionOutput / SamplingParams /
_collective_rpc exactly as read from NVIDIA/TensorRT-LLM (1.2 line: tensorrt_llm/llmapi/llm.py,
tensorrt_llm/executor/result.py, tensorrt_llm/sampling_params.py, tensorrt_llm/llmapi/rlhf_utils.py,
tensorrt_llm/_torch/async_llm.py), with a toy model inside; see its docstring for each point. Tested here:
request building (n expansion, seeds, EOS as kept stop token), the logprobs_mode choice, result conversion to
rlx.Completion, bucketed IPC weight updates with the finalize call, sleep/wake ordering and the config mapping.
"""

from __future__ import annotations

import pytest
import torch
from trtllm_fake import (
    EOS,
    VOCAB,
    CompletionOutput,
    FakeLLM,
    FakeSamplingParams,
    Logprob,
    OldFakeSamplingParams,
    fake_handle_encoder,
)

from rlx.errors import ComponentError
from rlx.interfaces import Completion, Generator, ModelSpec, SamplingParams
from rlx_trtllm.generator import TRTLLMGenerator, build_requests, llm_kwargs, logprobs_mode_for, to_completion
from rlx_trtllm.plugin import TRTLLMConfig

MODEL = ModelSpec(path="/models/qwen", dtype="bfloat16", max_seq_len=4096)


def make(engine: FakeLLM | None = None, cls: type = FakeSamplingParams, **options) -> tuple[TRTLLMGenerator, FakeLLM]:
    engine = engine or FakeLLM(tp_size=options.get("tensor_parallel_size", 1))
    gen = TRTLLMGenerator(
        TRTLLMConfig(**options), model=MODEL, seed=3, engine=engine, sampling_params_cls=cls,
        eos_token_ids=(EOS,), encode_bucket=fake_handle_encoder,
    )  # fmt: skip
    return gen, engine


# ------------------------------------------------------------------------------------------ logprob semantics


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "approximate", "expected"),
    [(1.0, 0, 1.0, False, "raw"), (1.0, 5, 0.9, False, "raw"), (0.0, 0, 1.0, False, "raw"),
     (0.6, 0, 1.0, False, "processed"), (0.6, 5, 1.0, True, "processed"), (0.6, 0, 0.9, True, "processed")],
)  # fmt: skip
def test_logprobs_mode_choice(temperature, top_k, top_p, approximate, expected):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    assert logprobs_mode_for(params, supports_mode=True, approximate=approximate) == expected


def test_logprobs_mode_refuses_what_trtllm_cannot_give():
    with pytest.raises(ValueError, match="approximate_logprobs"):
        logprobs_mode_for(SamplingParams(temperature=0.6, top_p=0.9), supports_mode=True, approximate=False)
    with pytest.raises(ValueError, match="logprobs_mode"):
        logprobs_mode_for(SamplingParams(temperature=0.6), supports_mode=False, approximate=True)
    assert logprobs_mode_for(SamplingParams(temperature=1.0), supports_mode=False, approximate=False) is None


# ------------------------------------------------------------------------------------------ requests


def test_build_requests_expands_prompt_major_and_keeps_eos_as_stop_token():
    params = SamplingParams(n=2, temperature=0.6, top_k=-1, max_new_tokens=9, stop_token_ids=(7, EOS))
    inputs, requests = build_requests([[1, 2], [3]], params, seed_base=5, eos_token_ids=(EOS, 14),
                                      logprobs_mode="processed")  # fmt: skip
    assert inputs == [[1, 2], [1, 2], [3], [3]]
    assert len({r["seed"] for r in requests}) == 4
    first = requests[0]
    assert first["stop_token_ids"] == [EOS, 14, 7] and first["end_id"] == -1
    assert first["include_stop_str_in_output"] is True and first["top_k"] == 0 and first["top_p"] == 1.0
    assert first["max_tokens"] == 9 and first["logprobs"] == 1 and first["logprobs_mode"] == "processed"
    FakeSamplingParams(**first)  # every key is a real SamplingParams field
    _, old = build_requests([[1]], SamplingParams(), seed_base=5, eos_token_ids=(EOS,), logprobs_mode=None)
    assert "logprobs_mode" not in old[0]
    OldFakeSamplingParams(**old[0])


def test_build_requests_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        build_requests([[]], SamplingParams(), seed_base=0, eos_token_ids=(EOS,), logprobs_mode=None)
    with pytest.raises(ValueError, match="eos_token_ids"):
        build_requests([[1]], SamplingParams(), seed_base=0, eos_token_ids=(), logprobs_mode=None)


# ------------------------------------------------------------------------------------------ generation


def test_generate_shapes_order_and_distinct_samples():
    gen, _ = make()
    assert isinstance(gen, Generator)
    out = gen.generate([[1, 2], [4], [6, 7, 8]], SamplingParams(n=4, max_new_tokens=6))
    assert [len(group) for group in out] == [4, 4, 4]
    for group in out:
        for completion in group:
            assert isinstance(completion, Completion)
            assert len(completion.logprobs) == len(completion.token_ids) <= 6
    assert len({c.token_ids for c in out[0]}) > 1


@pytest.mark.parametrize(("temperature", "top_k"), [(0.7, 0), (1.0, 4)])
def test_logprobs_are_under_temperature_before_filtering(temperature, top_k):
    gen, engine = make()
    (group,) = gen.generate([[2]], SamplingParams(n=3, temperature=temperature, top_k=top_k, max_new_tokens=5))
    for completion in group:
        last = 2
        for token, logprob in zip(completion.token_ids, completion.logprobs, strict=True):
            expected = torch.log_softmax(engine.logits(last) / temperature, -1)[token]
            assert logprob == pytest.approx(float(expected), abs=1e-5)
            last = token


def test_seeds_reproduce():
    gen, _ = make()
    params = SamplingParams(n=2, max_new_tokens=8, seed=99)
    assert gen.generate([[1]], params) == gen.generate([[1]], params)


def test_eos_is_kept_with_its_logprob_and_length_finishes():
    weight = torch.full((VOCAB, VOCAB), -10.0)
    weight[1, 9] = 10.0
    weight[9, EOS] = 10.0
    weight[3, 3] = 10.0
    gen, _ = make(FakeLLM(weight=weight))
    stop, length = gen.generate([[1], [3]], SamplingParams(temperature=0.0, max_new_tokens=5))
    assert stop[0].token_ids == (9, EOS) and stop[0].finish_reason == "stop" and len(stop[0].logprobs) == 2
    assert length[0].token_ids == (3,) * 5 and length[0].finish_reason == "length"


def test_other_finish_reasons_and_bad_logprobs_raise():
    gen, engine = make()
    engine.force_finish = "cancelled"
    with pytest.raises(RuntimeError, match="'cancelled'"):
        gen.generate([[1]], SamplingParams(max_new_tokens=2))
    missing = CompletionOutput(index=0, token_ids=[4], logprobs=[{5: Logprob(-1.0, 1)}], finish_reason="length")
    with pytest.raises(RuntimeError, match="lack the sampled token 4"):
        to_completion(missing)
    short = CompletionOutput(index=0, token_ids=[4, 5], logprobs=[{4: Logprob(-1.0, 1)}], finish_reason="length")
    with pytest.raises(RuntimeError, match="1 logprobs for 2 tokens"):
        to_completion(short)


def test_simple_float_logprobs_are_accepted():
    gen, engine = make()
    engine.float_logprobs = True
    (group,) = gen.generate([[1]], SamplingParams(max_new_tokens=3))
    assert all(isinstance(lp, float) for lp in group[0].logprobs)


def test_old_tensorrt_llm_without_logprobs_mode():
    gen, _ = make(cls=OldFakeSamplingParams)
    assert gen.generate([[1]], SamplingParams(temperature=1.0, max_new_tokens=2))
    with pytest.raises(ValueError, match="logprobs_mode"):
        gen.generate([[1]], SamplingParams(temperature=0.6, max_new_tokens=2))


# ------------------------------------------------------------------------------------------ weights


def _new_weights(seed: int = 7) -> list[tuple[str, torch.Tensor]]:
    return [("lm_head.weight", torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed)))]


def test_update_weights_sends_buckets_to_every_worker_then_finalizes():
    engine = FakeLLM(tp_size=2)
    engine.weights.update({f"layer{i}.weight": torch.zeros(256, 256) for i in range(5)})  # 256 KiB each
    gen, _ = make(engine, weight_bucket_mb=1, tensor_parallel_size=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = gen.generate([[1], [2], [3]], params)
    stream = [*_new_weights(), *((f"layer{i}.weight", torch.full((256, 256), float(i))) for i in range(5))]
    gen.update_weights(iter(stream))
    methods = [m for m, _ in engine.rpcs]
    assert methods[0] == "rlx_device_uuid"
    payloads = [args[0] for m, args in engine.rpcs if m == "update_weights"]
    assert len(payloads) == 3 and payloads[-1] is None  # 2 buckets of <= 1 MiB, then the finalize call
    assert all(set(p) == {"GPU-fake-0", "GPU-fake-1"} for p in payloads[:-1])
    assert engine.finalized == 1
    assert all(float(engine.weights[f"layer{i}.weight"][0, 0]) == i for i in range(5))
    assert gen.generate([[1], [2], [3]], params) != before
    gen.update_weights(iter(_new_weights(8)))
    assert [m for m, _ in engine.rpcs].count("rlx_device_uuid") == 1  # asked once


def test_update_weights_empty_stream_raises():
    gen, _ = make()
    with pytest.raises(ValueError, match="empty"):
        gen.update_weights(iter([]))


# ------------------------------------------------------------------------------------------ memory


def test_sleep_wake_order_and_update_while_asleep():
    gen, engine = make()
    gen.sleep()
    gen.sleep()
    assert "kv_cache" in engine.released and "model" in engine.released
    with pytest.raises(RuntimeError, match="sleeps"):
        gen.generate([[1]], SamplingParams())
    gen.update_weights(iter(_new_weights()))  # weights come back first, the KV cache stays released
    assert engine.released == {"kv_cache"}
    gen.wake_up()
    gen.wake_up()
    wakes = [args[0] for m, args in engine.rpcs if m == "wakeup"]
    assert "model" in wakes[0] and "kv_cache" not in wakes[0] and wakes[1] == ["kv_cache"]
    assert gen.generate([[1]], SamplingParams(max_new_tokens=2))


def test_sleep_is_a_noop_without_enable_sleep_and_close_is_final():
    gen, engine = make(enable_sleep=False)
    gen.sleep()
    gen.wake_up()
    assert engine.rpcs == []
    gen.close()
    gen.close()
    assert engine.shutdowns == 1
    with pytest.raises(RuntimeError, match="closed"):
        gen.sleep()


# ------------------------------------------------------------------------------------------ config


def test_llm_kwargs_map_the_config():
    kwargs = llm_kwargs(TRTLLMConfig(), MODEL)
    assert kwargs == {
        "model": "/models/qwen",
        "tokenizer": "/models/qwen",
        "trust_remote_code": False,
        "tensor_parallel_size": 1,
        "dtype": "bfloat16",
        "backend": "pytorch",
        "orchestrator_type": "ray",
        "ray_worker_extension_cls": "rlx_trtllm.worker_extension.RlxWorkerExtension",
        "enable_sleep": True,
        "max_seq_len": 4096,
        "sampler_type": "TorchSampler",
        "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": True},
    }
    custom = TRTLLMConfig(tensor_parallel_size=2, cuda_graph=False, max_batch_size=64, max_num_tokens=8192,
                          dtype="float16", llm_args={"attn_backend": "TRTLLM"})  # fmt: skip
    kwargs = llm_kwargs(custom, MODEL)
    assert kwargs["allreduce_strategy"] == "NCCL" and kwargs["cuda_graph_config"] is None
    assert (kwargs["max_batch_size"], kwargs["max_num_tokens"], kwargs["dtype"]) == (64, 8192, "float16")
    assert kwargs["attn_backend"] == "TRTLLM"


def test_llm_kwargs_rejects_the_builtin_model_and_shadowing_llm_args():
    with pytest.raises(ComponentError, match="use --generator hf"):
        llm_kwargs(TRTLLMConfig(), ModelSpec(path="builtin:tiny"))
    with pytest.raises(ValueError, match=r"llm_args must not set \['orchestrator_type'\]"):
        TRTLLMConfig(llm_args={"orchestrator_type": "mpi"})
