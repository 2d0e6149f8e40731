"""The sglang adapter's own logic, tested at its narrowest boundary to the engine: the `engine` object.

`sglang_fake.FakeSGLangEngine` mimics `sglang.Engine`'s inputs and outputs exactly as read from sglang 0.5.14
(python/sglang/srt/entrypoints/engine.py, managers/io_struct.py, managers/tokenizer_manager.py,
managers/schedule_batch.py, layers/sampler.py, model_executor/model_runner.py; unchanged in 0.5.23), with a toy
model inside. What is tested here: request building (n expansion, seeds, sampling dicts), result conversion to
rlx.Completion (logprobs, finish reasons, errors), bucketed weight updates (tensor, flattened, NCCL paths),
sleep/wake ordering, config -> ServerArgs mapping and the logprob-semantics guard.
"""

from __future__ import annotations

import pytest
import torch
from sglang_fake import EOS, VOCAB, FakeBroadcaster, FakeSGLangEngine, fake_flattened_encoder

from rlx.errors import ComponentError, WeightPushIncompleteError
from rlx.interfaces import Completion, Generator, ModelSpec, SamplingParams
from rlx_sglang.generator import (
    SGLangGenerator,
    build_requests,
    check_logprob_env,
    dtype_name,
    engine_kwargs,
    flatten_for_broadcast,
    to_completion,
)
from rlx_sglang.plugin import SGLangConfig

MODEL = ModelSpec(path="/models/qwen", dtype="bfloat16", max_seq_len=4096)


def make(engine: FakeSGLangEngine | None = None, **options) -> tuple[SGLangGenerator, FakeSGLangEngine]:
    config = SGLangConfig(**options)
    backup = config.sleep_weights == "backup"
    engine = engine or FakeSGLangEngine(tp_size=config.tp_size, weights_cpu_backup=backup)
    gen = SGLangGenerator(
        config, model=MODEL, seed=3, engine=engine, encode_bucket=fake_flattened_encoder, eos_token_ids={EOS}
    )
    return gen, engine


# ------------------------------------------------------------------------------------------ requests


def test_build_requests_expands_prompt_major_with_distinct_seeds():
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=5, stop_token_ids=(7,))
    ids, sampling = build_requests([[1, 2], [3]], params, seed_base=11)
    assert ids == [[1, 2]] * 3 + [[3]] * 3
    assert len({s["sampling_seed"] for s in sampling}) == 6
    assert sampling[0] == {
        "max_new_tokens": 5,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,  # rlx "disabled" (<= 0) -> sglang's -1
        "sampling_seed": sampling[0]["sampling_seed"],
        "stop_token_ids": [7],
    }
    assert build_requests([[1]], params, seed_base=11)[1][0]["sampling_seed"] == sampling[0]["sampling_seed"]


@pytest.mark.parametrize(
    ("prompts", "params", "match"),
    [([[]], SamplingParams(), "empty"), ([[1]], SamplingParams(n=0), "n must be"),
     ([[1]], SamplingParams(max_new_tokens=0), "max_new_tokens")],
)  # fmt: skip
def test_build_requests_rejects_bad_input(prompts, params, match):
    with pytest.raises(ValueError, match=match):
        build_requests(prompts, params, seed_base=0)


# ------------------------------------------------------------------------------------------ generation


def test_is_a_generator_and_returns_n_completions_per_prompt_in_order():
    gen, engine = make()
    assert isinstance(gen, Generator)
    out = gen.generate([[1, 2, 3], [4], [5, 6]], SamplingParams(n=4, max_new_tokens=6, temperature=1.0))
    assert [len(group) for group in out] == [4, 4, 4]
    assert engine.calls[-1] == ("generate", {"n_requests": 12})
    for group in out:
        for completion in group:
            assert isinstance(completion, Completion)
            assert 1 <= len(completion.token_ids) <= 6
            assert len(completion.logprobs) == len(completion.token_ids)
            assert all(lp <= 0.0 for lp in completion.logprobs)
    # distinct seeds per sample: 4 samples of one prompt are not all the same
    assert len({c.token_ids for c in out[0]}) > 1


def test_logprobs_are_under_temperature_before_top_k():
    gen, engine = make()
    temperature = 0.5
    (group,) = gen.generate([[2]], SamplingParams(n=2, temperature=temperature, top_k=3, max_new_tokens=4))
    for completion in group:
        last = 2
        for token, logprob in zip(completion.token_ids, completion.logprobs, strict=True):
            expected = torch.log_softmax(engine.logits(last) / temperature, -1)[token]
            assert logprob == pytest.approx(float(expected), abs=1e-5)
            top3 = torch.argsort(engine.logits(last), descending=True)[:3].tolist()
            assert token in top3  # sampled within top-k, logprob still of the full distribution
            last = token


def test_same_seed_same_samples_and_fresh_seeds_otherwise():
    gen, _ = make()
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=123)
    assert gen.generate([[1]], params) == gen.generate([[1]], params)
    free = SamplingParams(n=2, temperature=1.0, max_new_tokens=8)
    runs = {tuple(c.token_ids for c in gen.generate([[1]], free)[0]) for _ in range(4)}
    assert len(runs) > 1


def test_finish_reasons_stop_keeps_the_stop_token_and_length():
    weight = torch.full((VOCAB, VOCAB), -10.0)
    weight[1, 9] = 10.0  # 1 -> 9 -> EOS, greedily
    weight[9, EOS] = 10.0
    weight[3, 3] = 10.0  # 3 -> 3 -> 3 ... never stops
    gen, _ = make(FakeSGLangEngine(weight=weight))
    stop, length = gen.generate([[1], [3]], SamplingParams(temperature=0.0, max_new_tokens=5))
    assert stop[0].token_ids == (9, EOS) and stop[0].finish_reason == "stop"
    assert length[0].token_ids == (3,) * 5 and length[0].finish_reason == "length"
    (custom,) = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=5, stop_token_ids=(9,)))
    assert custom[0].token_ids == (9,) and custom[0].finish_reason == "stop"


def test_a_stop_token_sampled_as_the_last_allowed_token_is_a_stop():
    """sglang reports "length" there (it tests the limit first); rlx says "stop", like the other generators."""
    weight = torch.full((VOCAB, VOCAB), -10.0)
    weight[1, 9] = 10.0  # 1 -> 9 -> EOS -> 3 ... greedily
    weight[9, EOS] = 10.0
    weight[EOS, 3] = 10.0
    gen, _ = make(FakeSGLangEngine(weight=weight))
    (eos_last,) = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=2))
    assert eos_last[0].token_ids == (9, EOS) and eos_last[0].finish_reason == "stop"
    (custom_last,) = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=1, stop_token_ids=(9,)))
    assert custom_last[0].token_ids == (9,) and custom_last[0].finish_reason == "stop"
    (plain,) = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=1))
    assert plain[0].token_ids == (9,) and plain[0].finish_reason == "length"


def test_aborted_request_raises_with_the_engine_message():
    gen, engine = make()
    engine.abort_next = "The input (5000 tokens) is longer than the model's context length (4096 tokens)."
    with pytest.raises(RuntimeError, match="aborted request req-0: The input"):
        gen.generate([[1]], SamplingParams(max_new_tokens=2))


def test_to_completion_checks_logprob_alignment():
    good = {"output_ids": [4, 5], "meta_info": {"id": "r", "finish_reason": {"type": "length", "length": 2},
            "output_token_logprobs": [(-0.5, 4, None), (-1.5, 5, None)]}}  # fmt: skip
    assert to_completion(good) == Completion(token_ids=(4, 5), logprobs=(-0.5, -1.5), finish_reason="length")
    shifted = {**good, "meta_info": {**good["meta_info"], "output_token_logprobs": [(-0.5, 4, None), (-1.5, 6, None)]}}
    with pytest.raises(RuntimeError, match="position 1 is for token 6"):
        to_completion(shifted)
    missing = {**good, "meta_info": {"id": "r", "finish_reason": {"type": "stop", "matched": 5}}}
    with pytest.raises(RuntimeError, match="no output_token_logprobs"):
        to_completion(missing)


def test_empty_prompt_list():
    gen, engine = make()
    assert gen.generate([], SamplingParams()) == []
    assert engine.calls == []


# ------------------------------------------------------------------------------------------ weights


def _new_weights(seed: int = 7) -> list[tuple[str, torch.Tensor]]:
    return [("lm_head.weight", torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed)))]


@pytest.mark.parametrize("weight_format", ["flattened_bucket", "named_tensors"])
def test_update_weights_changes_outputs(weight_format):
    gen, engine = make(weight_format=weight_format)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = gen.generate([[1], [2], [3]], params)
    new = _new_weights()
    gen.update_weights(iter(new))
    assert torch.equal(engine.weights["lm_head.weight"], new[0][1])
    assert gen.generate([[1], [2], [3]], params) != before
    updates = [c for name, c in engine.calls if name == "update_weights_from_tensor"]
    assert updates and all(c["flush_cache"] is False for c in updates)
    assert all(c["load_format"] == (None if weight_format == "named_tensors" else "flattened_bucket") for c in updates)
    assert engine.flushes == 1  # once, after the last bucket


def test_update_weights_buckets_are_bounded_and_one_payload_per_tp_rank():
    engine = FakeSGLangEngine(tp_size=2)
    engine.weights.update({f"layer{i}.weight": torch.zeros(256, 256) for i in range(5)})  # 256 KiB each
    gen, _ = make(engine, weight_bucket_mb=1, tp_size=2)
    stream = ((f"layer{i}.weight", torch.full((256, 256), float(i))) for i in range(5))
    gen.update_weights(stream)
    payloads = [c["payload"] for name, c in engine.calls if name == "update_weights_from_tensor"]
    assert len(payloads) == 2  # 4 x 256 KiB fit in 1 MiB, the 5th goes alone
    assert all(len(p) == 2 for p in payloads)
    assert all(p[0]["flattened_tensor"].numel() <= 2**20 for p in payloads)
    assert all(float(engine.weights[f"layer{i}.weight"][0, 0]) == i for i in range(5))


@pytest.mark.parametrize("weight_sync", ["tensor", "nccl"])
def test_flattened_buckets_are_split_by_dtype_so_every_view_is_aligned(weight_sync):
    # 5 bfloat16 values (10 bytes) then float32: in one flat buffer the float32 view would start at an
    # offset not divisible by 4, which torch (and so sglang's reconstruct_tensors) refuses
    engine = FakeSGLangEngine()
    engine.weights.update({"odd": torch.zeros(5, dtype=torch.bfloat16), "norm": torch.zeros(3)})
    gen = SGLangGenerator(
        SGLangConfig(weight_sync=weight_sync, nccl_device="cpu"),
        model=MODEL,
        seed=0,
        engine=engine,
        encode_bucket=fake_flattened_encoder,
        broadcaster=FakeBroadcaster(engine),
        eos_token_ids={EOS},
    )
    gen.update_weights(iter([("odd", torch.ones(5, dtype=torch.bfloat16)), ("norm", torch.full((3,), 2.0)),
                             *_new_weights()]))  # fmt: skip
    assert torch.equal(engine.weights["odd"], torch.ones(5, dtype=torch.bfloat16))
    assert torch.equal(engine.weights["norm"], torch.full((3,), 2.0))
    call = "update_weights_from_tensor" if weight_sync == "tensor" else "update_weights_from_distributed"
    assert len([c for name, c in engine.calls if name == call]) == 2  # bfloat16 part, float32 part


def test_update_weights_failure_and_empty_stream_raise():
    gen, engine = make()
    engine.fail_update = "Failed to update parameter online: shape mismatch"
    with pytest.raises(RuntimeError, match="update_weights_from_tensor failed: .*shape mismatch"):
        gen.update_weights(iter(_new_weights()))
    engine.fail_update = None
    with pytest.raises(ValueError, match="empty"):
        gen.update_weights(iter([]))


def test_a_failed_push_refuses_to_serve_until_a_push_completes_and_versions_are_reported():
    gen, engine = make()
    engine.fail_update = "Failed to update parameter online: shape mismatch"
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gen.update_weights(iter(_new_weights()), version=4)
    with pytest.raises(WeightPushIncompleteError, match="version 4 did not complete"):
        gen.generate([[1]], SamplingParams(max_new_tokens=2))
    engine.fail_update = None
    gen.update_weights(iter(_new_weights()), version=5)
    (group,) = gen.generate([[1]], SamplingParams(n=2, max_new_tokens=2))
    assert [c.policy_version for c in group] == [5, 5]


@pytest.mark.parametrize("weight_format", ["flattened_bucket", "named_tensors"])
def test_nccl_path_broadcasts_what_the_engine_expects(weight_format):
    engine = FakeSGLangEngine(tp_size=2)
    engine.weights["bias"] = torch.zeros(3, dtype=torch.bfloat16)
    broadcaster = FakeBroadcaster(engine)
    gen = SGLangGenerator(
        SGLangConfig(weight_sync="nccl", weight_format=weight_format, tp_size=2, nccl_device="cpu",
                     nccl_master_port=29555),  # fmt: skip
        model=MODEL, seed=0, engine=engine, broadcaster=broadcaster, eos_token_ids={EOS},
    )  # fmt: skip
    before = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=4))
    gen.update_weights(iter([*_new_weights(), ("bias", torch.ones(3, dtype=torch.bfloat16))]))
    gen.update_weights(iter(_new_weights(8)))  # the group is set up once
    assert broadcaster.inits == [("127.0.0.1", 29555, 3, engine.group["group_name"])]
    assert engine.group["rank_offset"] == 1 and engine.group["world_size"] == 3
    calls = [c for name, c in engine.calls if name == "update_weights_from_distributed"]
    if weight_format == "flattened_bucket":  # one flat buffer per dtype
        assert [c["names"] for c in calls[:2]] == [["lm_head.weight"], ["bias"]]
        assert [c["dtypes"] for c in calls[:2]] == [["float32"], ["bfloat16"]]
        assert [c["shapes"] for c in calls[:2]] == [[[VOCAB, VOCAB]], [[3]]]
    else:
        assert calls[0]["names"] == ["lm_head.weight", "bias"] and calls[0]["dtypes"] == ["float32", "bfloat16"]
        assert calls[0]["shapes"] == [[VOCAB, VOCAB], [3]]
    assert torch.equal(engine.weights["bias"], torch.ones(3, dtype=torch.bfloat16))
    assert torch.equal(engine.weights["lm_head.weight"], _new_weights(8)[0][1])
    assert gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=4)) != before
    gen.close()
    assert broadcaster.closed and engine.shutdowns == 1


def test_flatten_for_broadcast_and_dtype_names():
    a, b = torch.arange(3, dtype=torch.float32), torch.ones(2, dtype=torch.bfloat16)
    flat = flatten_for_broadcast([a, b])
    assert flat.dtype == torch.uint8 and flat.numel() == 3 * 4 + 2 * 2
    assert torch.equal(flat[:12].view(torch.float32), a)
    assert dtype_name(torch.bfloat16) == "bfloat16" and getattr(torch, dtype_name(torch.float16)) is torch.float16


# ------------------------------------------------------------------------------------------ memory


def test_sleep_then_wake_up_resumes_weights_before_kv_cache():
    gen, engine = make(sleep_weights="backup")
    gen.sleep()
    gen.sleep()  # idempotent
    assert engine.offload_tags == {"kv_cache", "weights", "cuda_graph"}
    with pytest.raises(RuntimeError, match="sleeps"):
        gen.generate([[1]], SamplingParams())
    gen.wake_up()
    gen.wake_up()
    resumes = [tags for name, tags in engine.calls if name == "resume"]
    assert resumes == [["weights", "cuda_graph"], ["kv_cache"]]
    assert gen.generate([[1]], SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize("mode", ["backup", "drop"])
def test_update_weights_while_asleep_brings_back_only_the_weights(mode):
    gen, engine = make(sleep_weights=mode)
    gen.sleep()
    gen.update_weights(iter(_new_weights()))
    assert engine.offload_tags == {"kv_cache"}
    gen.wake_up()
    assert engine.offload_tags == set()
    assert [tags for name, tags in engine.calls if name == "resume"] == [["weights", "cuda_graph"], ["kv_cache"]]


@pytest.mark.parametrize(("mode", "released"), [("keep", {"kv_cache", "cuda_graph"}),
                                                ("backup", {"kv_cache", "cuda_graph", "weights"})])  # fmt: skip
def test_sleep_then_wake_up_keeps_the_weights_when_kept_or_backed_up(mode, released):
    gen, engine = make(sleep_weights=mode)
    before = gen.generate([[1], [4]], SamplingParams(temperature=0.0, max_new_tokens=6))
    gen.sleep()
    assert engine.offload_tags == released
    gen.wake_up()
    assert engine.offload_tags == set()
    assert gen.generate([[1], [4]], SamplingParams(temperature=0.0, max_new_tokens=6)) == before


def test_without_cpu_backup_wake_up_needs_a_weight_push_first():
    gen, engine = make(sleep_weights="drop")
    gen.sleep()
    with pytest.raises(RuntimeError, match="update_weights\\(\\) before wake_up"):
        gen.wake_up()
    assert engine.offload_tags == {"kv_cache", "weights", "cuda_graph"}  # still asleep, nothing half-resumed
    gen.update_weights(iter(_new_weights()))
    gen.wake_up()
    (group,) = gen.generate([[1]], SamplingParams(temperature=0.0, max_new_tokens=4))
    assert all(lp == lp for lp in group[0].logprobs)  # not NaN: the pushed weights, not the dropped ones


def test_sleep_is_a_noop_without_memory_saver():
    gen, engine = make(enable_memory_saver=False)
    gen.sleep()
    gen.wake_up()
    assert engine.calls == []


def test_close_is_idempotent_and_final():
    gen, engine = make()
    gen.close()
    gen.close()
    assert engine.shutdowns == 1
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate([[1]], SamplingParams())


# ------------------------------------------------------------------------------------------ config


def test_engine_kwargs_map_the_config_onto_server_args():
    kwargs = engine_kwargs(SGLangConfig(), MODEL, seed=5)
    assert kwargs == {
        "model_path": "/models/qwen",
        "tokenizer_path": "/models/qwen",
        "trust_remote_code": False,
        "tp_size": 1,
        "context_length": 4096,
        "dtype": "bfloat16",
        "random_seed": 5,
        "base_gpu_id": 0,
        "enable_memory_saver": True,
        "enable_weights_cpu_backup": False,
        "enable_deterministic_inference": False,
        "skip_tokenizer_init": False,
        "grammar_backend": "none",
    }
    custom = SGLangConfig(
        mem_fraction_static=0.4, tp_size=2, context_length=8192, dtype="float16", attention_backend="fa3",
        sampling_backend="pytorch", grammar_backend="xgrammar", seed=9, engine_args={"disable_cuda_graph": True},
    )  # fmt: skip
    kwargs = engine_kwargs(custom, MODEL, seed=5)
    assert kwargs["mem_fraction_static"] == 0.4 and kwargs["attention_backend"] == "fa3"
    assert kwargs["grammar_backend"] == "xgrammar"
    assert kwargs["sampling_backend"] == "pytorch" and kwargs["disable_cuda_graph"] is True
    assert (kwargs["tp_size"], kwargs["context_length"], kwargs["dtype"], kwargs["random_seed"]) == (
        2,
        8192,
        "float16",
        9,
    )


def test_engine_kwargs_rejects_the_builtin_cpu_model():
    with pytest.raises(ComponentError, match="use --generator hf"):
        engine_kwargs(SGLangConfig(), ModelSpec(path="builtin:tiny"), seed=0)


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_original_logprob_env_is_refused(value):
    with pytest.raises(ComponentError, match="SGLANG_RETURN_ORIGINAL_LOGPROB"):
        check_logprob_env({"SGLANG_RETURN_ORIGINAL_LOGPROB": value})
    check_logprob_env({"SGLANG_RETURN_ORIGINAL_LOGPROB": "0"})
    check_logprob_env({})
