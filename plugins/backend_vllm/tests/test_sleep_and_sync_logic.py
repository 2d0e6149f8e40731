"""The generator's sleep/wake order, weight-update paths and in-flight bookkeeping, on a recording stand-in for
`vllm.LLM` (and its `llm_engine`).

These paths need CUDA sleep mode, worker processes or an older vLLM; the stand-in checks the calls the plugin
makes, in order. Needs torch, not vllm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rlx.interfaces import GenerationRequest, SamplingParams
from rlx_vllm.generator import VLLMGenerator, to_completion
from rlx_vllm.plugin import VLLMConfig
from rlx_vllm.transport import WeightSync, open_bucket, pack_bucket, unpack_bucket


@dataclass
class Span:
    version: str
    start: int
    end: int


@dataclass
class FakeOutput:
    """A finished vLLM CompletionOutput: one token per step, logprob -0.5 each."""

    token_ids: list[int]
    finish_reason: str = "length"
    index: int = 0
    weight_versions: list[Span] | None = None
    logprobs: list[dict[int, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in self.token_ids]


class RecordingEngine:
    """`llm.llm_engine`: requests finish one per `step()`, oldest first; an in-process engine core."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls
        self.requests: list[str] = []
        self.engine_core = SimpleNamespace(engine_core=self)  # InprocClient: no call_utility

    def add_request(self, request_id: str, prompt: dict, params: Any) -> None:
        self.requests.append(request_id)

    def step(self) -> list[Any]:
        self.calls.append(("step",))
        request_id = self.requests.pop(0)
        return [SimpleNamespace(request_id=request_id, finished=True, outputs=[FakeOutput([7, 8])])]

    def abort_request(self, request_ids: list[str]) -> None:
        self.requests = [r for r in self.requests if r not in request_ids]

    def pause_scheduler(self, mode: str, clear_cache: bool) -> None:
        self.calls.append(("pause_scheduler", mode, clear_cache))

    def resume_scheduler(self) -> None:
        self.calls.append(("resume_scheduler",))

    def set_weight_version(self, label: str) -> None:
        self.calls.append(("set_weight_version", label))


class RecordingLLM:
    """`unloaded`: the parameter names the worker reports a reload did not reach (None: it cannot tell)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.llm_engine = RecordingEngine(self.calls)
        self.unloaded: list[str] | None = None

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache", "running") if reset_running_requests else ("reset_prefix_cache",))
        return True

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        if method == "rlx_reload_weights":
            names = [name for name, _ in args[0]]  # consume the stream, as the worker does
            self.calls.append((method, tuple(names)))
            return [self.unloaded]
        elif method == "rlx_load_bucket":
            metadata, payload = args
            flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            self.calls.append((method, tuple(name for name, _ in unpack_bucket(metadata, flat))))
        elif method == "rlx_load_bucket_ipc":
            metadata, handle = args
            flat = open_bucket(handle, torch.device("cpu"))
            self.calls.append((method, tuple(name for name, _ in unpack_bucket(metadata, flat))))
        else:
            self.calls.append((method,))
            if method == "rlx_finish_reload":
                return [self.unloaded]
        return [None]


def _generator(
    weight_sync: WeightSync = "direct", sleep_enabled: bool = True, bucket_mb: int = 1, drop_weights: bool = True
) -> tuple[VLLMGenerator, RecordingLLM]:
    generator = object.__new__(VLLMGenerator)
    llm = RecordingLLM()
    generator.config = VLLMConfig(weight_bucket_mb=bucket_mb, drop_weights_before_push=drop_weights)
    generator.llm = llm  # type: ignore[assignment]
    generator.sleep_enabled = sleep_enabled
    generator.weight_sync = weight_sync
    generator.max_model_len = 64
    generator._init_state()
    generator.sampling_params = lambda params: params  # type: ignore[method-assign] # vllm's own is not needed
    return generator, llm


def _weights(count: int = 3, mib: float = 0.75) -> list[tuple[str, torch.Tensor]]:
    numel = int(mib * 2**20) // 4
    return [(f"layer{i}.weight", torch.full((numel,), float(i))) for i in range(count)]


def test_wake_up_brings_weights_back_before_the_kv_cache() -> None:
    generator, llm = _generator()
    generator.sleep()
    generator.sleep()  # twice is once
    generator.wake_up()
    assert llm.calls == [("sleep", 1), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert generator.asleep == set()


def test_update_while_asleep_wakes_only_the_weights() -> None:
    generator, llm = _generator()
    generator.sleep()
    generator.update_weights(iter(_weights()))
    assert llm.calls[:2] == [("sleep", 1), ("wake_up", ("weights",))]
    assert ("wake_up", ("kv_cache",)) not in llm.calls
    assert generator.asleep == {"kv_cache"}
    generator.wake_up()
    assert llm.calls[-1] == ("wake_up", ("kv_cache",))


def test_without_sleep_mode_sleep_does_nothing() -> None:
    generator, llm = _generator(sleep_enabled=False)
    generator.sleep()
    generator.wake_up()
    assert llm.calls == []


def test_direct_update_streams_once_then_resets_the_prefix_cache() -> None:
    generator, llm = _generator()
    generator.update_weights(iter(_weights()))
    assert llm.calls == [
        ("rlx_reload_weights", ("layer0.weight", "layer1.weight", "layer2.weight")),
        ("reset_prefix_cache",),
    ]
    assert generator.last_update["weight_update/buckets"] == 3  # 0.75 MiB tensors, 1 MiB buckets
    assert generator.last_update["weight_update/megabytes"] == pytest.approx(2.25, rel=1e-3)
    assert generator.last_update["weight_update/transport"] == "direct"


@pytest.mark.parametrize(("weight_sync", "method"), [("rpc", "rlx_load_bucket"), ("ipc", "rlx_load_bucket_ipc")])
def test_bucket_update_sends_each_bucket_between_begin_and_finish(weight_sync: WeightSync, method: str) -> None:
    generator, llm = _generator(weight_sync, bucket_mb=2)
    generator.update_weights(iter(_weights(count=3, mib=0.75)))
    assert [c[0] for c in llm.calls] == [
        "rlx_begin_reload",
        method,
        method,
        "rlx_finish_reload",
        "reset_prefix_cache",
    ]
    assert llm.calls[1][1] == ("layer0.weight", "layer1.weight") and llm.calls[2][1] == ("layer2.weight",)
    assert generator.last_update["weight_update/transport"] == weight_sync  # CPU tensors: a shared-memory file


def test_generate_refuses_to_run_with_weights_asleep() -> None:
    generator, _ = _generator()
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


# ------------------------------------------------------------------------------------------ in flight


def _submit(generator: VLLMGenerator, *ids: str) -> None:
    generator.submit([GenerationRequest(i, (1, 2, 3), SamplingParams(max_new_tokens=2)) for i in ids])


def test_in_flight_update_pauses_recomputes_running_kv_and_labels_the_version() -> None:
    generator, llm = _generator()
    generator.partial_rollouts = True
    _submit(generator, "a", "b")
    generator.update_weights(iter(_weights(count=1)), version=4)
    assert llm.calls == [
        ("pause_scheduler", "keep", False),
        ("rlx_reload_weights", ("layer0.weight",)),
        ("reset_prefix_cache", "running"),
        ("set_weight_version", "4"),
        ("resume_scheduler",),
    ]
    assert generator.num_pending() == 2
    assert sorted(r.request_id for r in generator.collect(min_results=2)) == ["a", "b"]


def test_a_vllm_without_version_labels_finishes_in_flight_requests_before_an_update() -> None:
    generator, llm = _generator()
    generator.update_weights(iter(_weights(count=1)), version=3)
    _submit(generator, "a", "b")
    llm.calls.clear()
    generator.update_weights(iter(_weights(count=1)), version=4)
    assert [c[0] for c in llm.calls] == ["step", "step", "rlx_reload_weights", "reset_prefix_cache"]
    results = generator.collect(min_results=2)
    assert sorted(r.request_id for r in results) == ["a", "b"]
    assert {c.policy_version for r in results for c in r.completions} == {3}  # sampled before version 4 landed
    assert generator.num_pending() == 0 and generator.collect() == []


def test_sleep_refuses_while_requests_are_in_flight() -> None:
    generator, llm = _generator()
    _submit(generator, "a")
    with pytest.raises(RuntimeError, match="1 request.s. in flight"):
        generator.sleep()
    generator.collect()
    generator.sleep()
    assert llm.calls[-1] == ("sleep", 1)


def test_weight_version_spans_become_the_policy_version_and_switches() -> None:
    spans = [Span("default", 0, 2), Span("5", 2, 3), Span("6", 3, 5)]
    completion = to_completion(FakeOutput([1, 2, 3, 4, 5], weight_versions=spans), version=9)
    assert completion.policy_version is None and completion.version_switches == ((2, 5), (3, 6))
    assert completion.token_versions() == (None, None, 5, 6, 6)
    assert to_completion(FakeOutput([1, 2]), version=9).policy_version == 9  # a vLLM without spans


# ------------------------------------------------------------------------------------------ sleep before a push


def test_sleep_before_a_push_discards_the_weights_and_a_plain_sleep_keeps_them() -> None:
    generator, llm = _generator()
    assert generator.can_drop_weights_on_sleep
    generator.sleep(drop_weights=True)
    assert llm.calls == [("sleep", 2)] and generator.weights_dropped
    plain, plain_llm = _generator()
    plain.sleep()
    assert plain_llm.calls == [("sleep", 1)] and not plain.weights_dropped


@pytest.mark.parametrize(("drop_weights", "sleep_enabled"), [(False, True), (True, False)])
def test_without_the_option_or_sleep_mode_a_sleep_before_a_push_keeps_the_weights(
    drop_weights: bool, sleep_enabled: bool
) -> None:
    generator, llm = _generator(drop_weights=drop_weights, sleep_enabled=sleep_enabled)
    assert not generator.can_drop_weights_on_sleep
    generator.sleep(drop_weights=True)
    generator.wake_up()  # the weights were kept: nothing to refuse
    assert llm.calls == ([("sleep", 1), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",))] if sleep_enabled else [])
    assert not generator.weights_dropped


def test_after_dropping_the_weights_wake_up_and_sampling_refuse_until_a_push() -> None:
    generator, llm = _generator()
    generator.sleep(drop_weights=True)
    for call in (
        generator.wake_up,
        lambda: generator.generate([[1, 2]], SamplingParams(max_new_tokens=2)),
        lambda: _submit(generator, "a"),
    ):
        with pytest.raises(RuntimeError, match="discarded at sleep.*no weight push has completed.*update_weights"):
            call()
    assert llm.calls == [("sleep", 2)]  # nothing woken, nothing added to the engine
    assert generator.num_pending() == 0


def test_a_push_after_dropping_wakes_the_weights_loads_and_serves_again() -> None:
    generator, llm = _generator()
    generator.sleep(drop_weights=True)
    llm.unloaded = []  # the workers report every parameter reloaded
    generator.update_weights(iter(_weights(count=2)), version=1)
    assert llm.calls == [
        ("sleep", 2),
        ("wake_up", ("weights",)),
        ("rlx_reload_weights", ("layer0.weight", "layer1.weight")),
        ("reset_prefix_cache",),
    ]
    assert not generator.weights_dropped and generator.asleep == {"kv_cache"}
    generator.wake_up()
    assert generator.generate([[1, 2]], SamplingParams(max_new_tokens=2))[0][0].policy_version == 1
    # the second cycle: discard again, push again, serve
    llm.calls.clear()
    generator.sleep(drop_weights=True)
    with pytest.raises(RuntimeError, match="discarded at sleep"):
        generator.wake_up()
    generator.update_weights(iter(_weights(count=1)), version=2)
    generator.wake_up()
    assert [c[0] for c in llm.calls] == ["sleep", "wake_up", "rlx_reload_weights", "reset_prefix_cache", "wake_up"]
    assert llm.calls[0] == ("sleep", 2) and generator.asleep == set()
    assert generator.generate([[1, 2]], SamplingParams(max_new_tokens=2))[0][0].policy_version == 2


class _BrokenStream(Exception):
    pass


def _failing_weights() -> Any:
    yield _weights(count=1)[0]
    raise _BrokenStream("the trainer's stream broke")


@pytest.mark.parametrize("weight_sync", ["direct", "rpc"])
def test_a_failed_or_partial_push_after_dropping_leaves_the_generator_refusing(weight_sync: WeightSync) -> None:
    generator, llm = _generator(weight_sync)
    generator.sleep(drop_weights=True)
    with pytest.raises(_BrokenStream):
        generator.update_weights(_failing_weights(), version=1)
    assert generator.weights_dropped and ("wake_up", ("weights",)) in llm.calls
    with pytest.raises(RuntimeError, match="discarded at sleep"):
        generator.wake_up()
    # a push that completes but leaves parameters unloaded: their memory is garbage
    llm.unloaded = ["model.norm.weight"]
    with pytest.raises(RuntimeError, match=r"did not reach 1 parameter\(s\) \(e.g. model.norm.weight\)"):
        generator.update_weights(iter(_weights(count=1)), version=1)
    assert generator.weights_dropped
    with pytest.raises(RuntimeError, match="discarded at sleep"):
        generator.wake_up()
    llm.unloaded = []
    generator.update_weights(iter(_weights(count=1)), version=1)
    generator.wake_up()
    assert not generator.weights_dropped and generator.asleep == set()


def test_unloaded_parameters_do_not_fail_a_push_while_the_weights_were_kept() -> None:
    generator, llm = _generator()
    llm.unloaded = ["model.norm.weight"]  # level 1 kept them: vLLM itself only logs this
    generator.sleep()
    generator.update_weights(iter(_weights(count=1)), version=1)
    generator.wake_up()
    assert generator.asleep == set()
