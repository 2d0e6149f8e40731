"""`rlx.generation`: the helpers every generator shares, and the streaming adapter for batch-only generators."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from rlx.errors import ComponentError, GenerationRequestError, WeightPushIncompleteError
from rlx.generation import (
    BatchStreamingAdapter,
    ReleasedMemory,
    SeedStream,
    WeightPushGuard,
    as_streaming,
    can_drop_weights_on_sleep,
    check_requests,
    push_weights,
    sample_seeds,
    sleep_before_weight_push,
    special_tokens,
    takes_version,
)
from rlx.interfaces import Completion, GenerationRequest, ModelSpec, SamplingParams, StreamingGenerator
from rlx.testing import make_tiny_model


class OldStyleGenerator:
    """A batch-only plugin written before versions: completion i of prompt p is (p[0], call number)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, ...]], SamplingParams]] = []
        self.pushed: list[list[str]] = []
        self.fail_next = False
        self.release_generate: threading.Event | None = None  # when set: generate waits for it
        self.generating = threading.Event()
        self.in_generate = False
        self.pushed_while_generating: list[bool] = []

    def generate(self, prompts, params):
        self.generating.set()
        self.in_generate = True
        try:
            return self._generate(prompts, params)
        finally:
            self.in_generate = False

    def _generate(self, prompts, params):
        if self.release_generate is not None:
            assert self.release_generate.wait(60)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine fell over")
        self.calls.append(([tuple(p) for p in prompts], params))
        return [[Completion((p[0], len(self.calls)), (-0.1, -0.2), "length") for _ in range(params.n)] for p in prompts]

    def update_weights(self, weights):  # the old signature: no version
        self.pushed_while_generating.append(self.in_generate)
        self.pushed.append([name for name, _ in weights])

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class DroppingGenerator(OldStyleGenerator):
    """Declares the optional capability: `sleep(drop_weights=True)`."""

    can_drop_weights_on_sleep = True

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[bool] = []

    def sleep(self, drop_weights: bool = False) -> None:
        self.sleeps.append(drop_weights)


def _request(request_id: str, first_token: int, **params: object) -> GenerationRequest:
    return GenerationRequest(request_id, (first_token, 2, 3), SamplingParams(**params))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the adapter


def test_the_adapter_groups_queued_requests_by_params_in_submission_order() -> None:
    inner = OldStyleGenerator()
    stream = as_streaming(inner)
    assert isinstance(stream, BatchStreamingAdapter) and isinstance(stream, StreamingGenerator)
    assert as_streaming(stream) is stream
    stream.submit([_request("a", 10, max_new_tokens=4), _request("b", 11, max_new_tokens=8),
                   _request("c", 12, max_new_tokens=4, n=2)])  # fmt: skip
    stream.submit([_request("d", 13, max_new_tokens=4)])
    assert stream.num_pending() == 4
    first = stream.collect(min_results=1)  # one generate call: the oldest request and its equals
    assert [r.request_id for r in first] == ["a", "d"]
    assert inner.calls == [([(10, 2, 3), (13, 2, 3)], SamplingParams(max_new_tokens=4))]
    assert [c.token_ids for c in first[1].completions] == [(13, 1)]
    rest = stream.collect(min_results=2)
    assert [r.request_id for r in rest] == ["b", "c"] and len(rest[1].completions) == 2
    assert [params.max_new_tokens for _, params in inner.calls] == [4, 8, 4]
    assert stream.num_pending() == 0 and stream.collect() == []


def test_the_adapter_pushes_without_version_to_old_plugins_and_stamps_the_version_itself() -> None:
    inner = OldStyleGenerator()
    stream = as_streaming(inner)
    assert not takes_version(inner.update_weights) and takes_version(stream.update_weights)
    stream.update_weights(iter([("w", None)]), version=3)  # type: ignore[list-item]
    assert inner.pushed == [["w"]]
    stream.submit([_request("a", 10)])
    ((_, (completion,)),) = stream.collect()
    assert completion.policy_version == 3
    assert stream.generate([[1]], SamplingParams())[0][0].policy_version == 3


def test_the_adapter_requeues_a_group_whose_generate_failed() -> None:
    inner = OldStyleGenerator()
    stream = as_streaming(inner)
    stream.submit([_request("a", 10), _request("b", 11, seed=1)])
    inner.fail_next = True
    with pytest.raises(RuntimeError, match="fell over"):
        stream.collect(min_results=2)
    assert stream.num_pending() == 2
    assert sorted(r.request_id for r in stream.collect(min_results=2)) == ["a", "b"]


def test_the_adapter_polls_without_generating_at_timeout_zero() -> None:
    inner = OldStyleGenerator()
    stream = as_streaming(inner)
    stream.submit([_request("a", 10)])
    assert stream.collect(min_results=1, timeout_s=0) == [] and inner.calls == []
    with pytest.raises(ValueError, match="min_results"):
        stream.collect(min_results=-1)


def test_a_weight_update_waits_for_the_generate_call_in_progress() -> None:
    inner = OldStyleGenerator()
    inner.release_generate = threading.Event()
    stream = as_streaming(inner)
    stream.submit([_request("a", 10)])
    collected: list = []
    collector = threading.Thread(target=lambda: collected.extend(stream.collect()))
    collector.start()
    assert inner.generating.wait(60)
    attempting = threading.Event()
    pusher = threading.Thread(target=lambda: (attempting.set(), stream.update_weights(iter([("w", None)]), version=9)))
    pusher.start()
    assert attempting.wait(60)
    inner.release_generate.set()
    collector.join(60)
    pusher.join(60)
    # the push never landed while generate ran: the request in flight was finished first, under the old version
    assert inner.pushed == [["w"]] and inner.pushed_while_generating == [False]
    assert collected[0].completions[0].policy_version is None  # sampled before version 9 landed


def test_the_adapter_refuses_to_serve_after_an_incomplete_push() -> None:
    inner = OldStyleGenerator()
    stream = as_streaming(inner)

    def cut_off():
        yield "w", None
        raise ConnectionError("trainer went away")

    with pytest.raises(ConnectionError):
        stream.update_weights(cut_off(), version=5)
    for call in (lambda: stream.generate([[1]], SamplingParams()), lambda: stream.submit([_request("a", 1)]),
                 lambda: stream.collect()):  # fmt: skip
        with pytest.raises(WeightPushIncompleteError, match=r"version 5 did not complete \(ConnectionError"):
            call()
    stream.update_weights(iter([("w", None)]), version=6)
    assert stream.generate([[1]], SamplingParams())[0][0].policy_version == 6


# ------------------------------------------------------------------------------------------ helpers


def test_sleep_before_a_push_drops_the_weights_only_where_the_generator_declares_it() -> None:
    dropping = DroppingGenerator()
    sleep_before_weight_push(dropping)
    assert dropping.sleeps == [True]

    class Truthy(OldStyleGenerator):
        can_drop_weights_on_sleep = "yes"  # not True: a plain sleep (which takes no keyword here)

    for plain in (OldStyleGenerator(), Truthy()):
        assert not can_drop_weights_on_sleep(plain)
        sleep_before_weight_push(plain)  # OldStyleGenerator.sleep() takes no keyword: one would raise TypeError


def test_the_adapter_forwards_the_drop_weights_capability_and_keyword() -> None:
    dropping = DroppingGenerator()
    adapter = BatchStreamingAdapter(dropping)
    assert adapter.can_drop_weights_on_sleep and can_drop_weights_on_sleep(adapter)
    sleep_before_weight_push(adapter)
    adapter.sleep()
    assert dropping.sleeps == [True, False]
    plain = BatchStreamingAdapter(OldStyleGenerator())
    assert not plain.can_drop_weights_on_sleep
    plain.sleep(drop_weights=True)  # a plain sleep on a generator without the capability


def test_check_requests_names_the_bad_request() -> None:
    good = _request("a", 1)
    check_requests([good])
    with pytest.raises(GenerationRequestError, match="'a' is already pending"):
        check_requests([good], pending={"a"})
    with pytest.raises(GenerationRequestError, match="'a' is already pending"):
        check_requests([good, good])
    with pytest.raises(GenerationRequestError, match="request 'b': SamplingParams.max_new_tokens must be >= 1"):
        check_requests([_request("b", 1, max_new_tokens=0)])
    with pytest.raises(GenerationRequestError, match="request 'c' has an empty prompt"):
        check_requests([GenerationRequest("c", ())])
    with pytest.raises(GenerationRequestError, match="item 0 is a tuple"):
        check_requests([("a", (1,))])  # type: ignore[list-item]
    assert isinstance(GenerationRequestError("x"), ValueError)


def test_seed_stream_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    state = random.getstate()
    stream, again = SeedStream(7), SeedStream(7)
    first = [stream.next(), stream.next()]
    assert first == [again.next(), again.next()] and first[0] != first[1]
    assert SeedStream(7).next() != SeedStream(8).next()
    assert SeedStream(7).resolve(SamplingParams(seed=42)) == 42
    assert random.getstate() == state


def test_sample_seeds_are_distinct_int32_and_follow_the_base() -> None:
    seeds = sample_seeds(2**61, 6)
    assert len(set(seeds)) == 6 and all(0 <= s < 2**31 - 1 for s in seeds)
    assert sample_seeds(5, 3) == [(5 * 1_000_003 + k) for k in range(3)]


def test_released_memory_brings_weights_back_before_the_kv_cache() -> None:
    calls: list[tuple[str, list[str]]] = []
    memory = ReleasedMemory(weight_tags=("weights", "cuda_graph"), kv_cache_tags=("kv_cache",))
    assert memory.release(lambda tags: calls.append(("release", tags)), keep=("weights",)) == ["kv_cache", "cuda_graph"]
    assert memory.release(lambda tags: calls.append(("release", tags))) == ["weights"]
    assert memory.release(lambda tags: calls.append(("release", tags))) == []  # all released: no call
    memory.resume_all(lambda tags: calls.append(("resume", tags)))
    assert calls == [("release", ["kv_cache", "cuda_graph"]), ("release", ["weights"]),
                     ("resume", ["weights", "cuda_graph"]), ("resume", ["kv_cache"])]  # fmt: skip
    assert memory.released == set() and not memory.weights_released


def test_weight_push_guard_marks_a_push_incomplete_until_it_returns() -> None:
    guard = WeightPushGuard("generator 'x'")
    with guard.push(1):
        with pytest.raises(WeightPushIncompleteError, match="version 1 did not complete \\(it was still running\\)"):
            guard.check()
    assert guard.complete and guard.version == 1
    with pytest.raises(KeyError), guard.push(None):
        raise KeyError("lm_head.weight")
    with pytest.raises(WeightPushIncompleteError, match="generator 'x' refuses to serve: an unversioned weight push"):
        guard.check()
    assert guard.version == 1  # the version served stays the last complete one's


def test_push_weights_passes_the_version_only_where_it_is_taken() -> None:
    seen: list[object] = []

    class New:
        def update_weights(self, weights, version=None):
            seen.append(version)

    push_weights(New(), iter([]), 4)  # type: ignore[arg-type]
    old = OldStyleGenerator()
    push_weights(old, iter([]), 4)  # type: ignore[arg-type]
    assert seen == [4] and old.pushed == [[]]


def test_special_tokens_read_generation_config_config_and_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = make_tiny_model(tmp_path / "m")
    tokenizer_eos = AutoTokenizer.from_pretrained(folder).eos_token_id
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(eos_token_id=7, pad_token_id=None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 11]}))
    spec = ModelSpec(path=folder)
    found = special_tokens(spec)
    assert found.eos_ids == tuple(dict.fromkeys([7, 11, tokenizer_eos]))
    assert special_tokens(spec, tokenizer=False).eos_ids == (7, 11)
    (tmp_path / "m" / "generation_config.json").unlink()
    assert special_tokens(spec, tokenizer=False).eos_ids == (7,)
    assert special_tokens(spec, tokenizer=False).pad_id == 7  # no pad id declared: the first EOS
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a folder without tokenizer files
        (tmp_path / "m" / name).unlink(missing_ok=True)
    assert special_tokens(spec).eos_ids == (7,)
    config["eos_token_id"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ComponentError, match="declares no EOS token"):
        special_tokens(spec)
