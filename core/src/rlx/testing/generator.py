"""`GeneratorConformance`: the pytest suite every `Generator` implementation passes (see `rlx.testing`).

All tests share one generator per class, built from `TinyModels.base`; tests that push other weights put
the base weights back before they return, so they may run in any order. The streaming tests run on the
plugin's own StreamingGenerator methods when it has them, else through `rlx.generation.as_streaming`'s adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import pytest

from rlx.errors import GenerationRequestError, WeightPushIncompleteError
from rlx.generation import as_streaming
from rlx.interfaces import Completion, GenerationRequest, Generator, ModelSpec, SamplingParams, StreamingGenerator
from rlx.testing.fixtures import TinyModels, iter_safetensors, session_tiny_models
from rlx.testing.reference import ReferenceKind, available_reference, greedy_margins, reference_logprobs

MakeGenerator = Callable[[ModelSpec], Generator]

# top-k/top-p change what is sampled but not the logprobs reported: those are before filtering.
_LOGPROB_CASES = {
    "t0.7-topk20-topp0.9": SamplingParams(n=4, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12, seed=3),
    "t1.3": SamplingParams(n=2, temperature=1.3, max_new_tokens=12, seed=4),
    "greedy": SamplingParams(n=1, temperature=0.0, max_new_tokens=12),
}
_QUESTIONS = ("What is 12 + 7?", "Compute 3 * 4 - 5.", "What is 81 / 9? Put the answer in \\boxed{}.")


def _greedy(max_new_tokens: int = 12, **kw: object) -> SamplingParams:
    return SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, **kw)  # type: ignore[arg-type]


def _tokens(result: list[list[Completion]]) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in result]


def _pairs(prompts: Sequence[Sequence[int]], result: list[list[Completion]]) -> list[tuple[list[int], list[int]]]:
    return [(list(p), list(c.token_ids)) for p, per_prompt in zip(prompts, result, strict=True) for c in per_prompt]


def _collect_all(stream: StreamingGenerator, ids: Sequence[str]) -> tuple[dict[str, list[Completion]], list[str]]:
    """Collect until every id in `ids` is back: (completions by id, ids in the order they came back)."""
    got: dict[str, list[Completion]] = {}
    order: list[str] = []
    while len(got) < len(ids):
        results = stream.collect(min_results=1)
        assert results, f"collect() returned nothing with {stream.num_pending()} request(s) pending and no timeout"
        for request_id, completions in results:
            assert request_id in ids and request_id not in got, f"unexpected or repeated request id {request_id!r}"
            got[request_id] = completions
            order.append(request_id)
    return got, order


class GeneratorConformance:
    """Subclass in your test module and override the `make_generator` fixture.

    Class attributes a plugin may override (say why in a comment; the defaults fit an fp32 engine):
    """

    #: dtype of the ModelSpec the generator is built with (the suite's weights are fp32).
    model_dtype: str = "float32"
    #: mean over completion tokens of exp(|generator logprob - reference logprob|) must stay below this.
    logprob_mismatch_tolerance: float = 1.01
    #: and no single token may differ by more than this (nats).
    logprob_max_abs_diff: float = 0.05
    #: a greedy token may trail the reference argmax by at most this (nats; covers exact ties).
    greedy_tolerance: float = 1e-3
    #: who computes the reference logprobs: "trainer" (the builtin fsdp trainer), "transformers", or
    #: "auto" = the trainer when `rlx.builtin.fsdp_trainer` imports, else a plain transformers forward.
    reference: str = "auto"
    #: streamed completions equal the batch path's for the same requests: tokens exactly, logprobs within this.
    stream_logprob_abs_diff: float = 1e-5

    # ------------------------------------------------------------------------------------ fixtures

    @pytest.fixture(scope="class")
    def make_generator(self) -> MakeGenerator:
        """Override: return a callable building your generator for a ModelSpec."""
        pytest.fail(f"{type(self).__name__} must override the `make_generator` fixture (see rlx.testing)")

    @pytest.fixture(scope="class")
    def tiny_models(self, tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
        return session_tiny_models(tmp_path_factory)

    @pytest.fixture(scope="class")
    def generator(self, make_generator: MakeGenerator, tiny_models: TinyModels) -> Iterator[Generator]:
        generator = make_generator(ModelSpec(tiny_models.base, dtype=self.model_dtype, max_seq_len=512))  # type: ignore[arg-type]
        yield generator
        generator.close()

    @pytest.fixture(scope="class")
    def prompts(self, tiny_models: TinyModels) -> list[list[int]]:
        """Three chat prompts of different lengths (so batches need padding)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_models.base)
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            for q in _QUESTIONS
        ]
        assert len({len(p) for p in prompts}) > 1
        return [list(p) for p in prompts]

    @pytest.fixture(scope="class")
    def eos_id(self, tiny_models: TinyModels) -> int:
        from transformers import AutoTokenizer

        return int(AutoTokenizer.from_pretrained(tiny_models.base).eos_token_id)

    def _reference_kind(self) -> ReferenceKind:
        if self.reference == "auto":
            return available_reference()
        if self.reference not in ("trainer", "transformers"):
            raise ValueError(f"reference must be auto | trainer | transformers, got {self.reference!r}")
        return self.reference  # type: ignore[return-value]

    @pytest.fixture(scope="class")
    def stream(self, generator: Generator) -> StreamingGenerator:
        """The generator's streaming side: its own methods, or the default adapter around its `generate`."""
        return as_streaming(generator)

    def _push(self, generator: Generator, model_dir: str, version: int | None = None) -> None:
        if version is None:
            generator.update_weights(iter_safetensors(model_dir))
        else:
            generator.update_weights(iter_safetensors(model_dir), version=version)

    def _assert_greedy_follows(self, model_dir: str, prompts: list[list[int]], result: list[list[Completion]]) -> None:
        """Every greedy token is the argmax of `model_dir`'s plain HF model (teacher-forced on the generator's
        own tokens, so one near-tie cannot derail the rest), up to `greedy_tolerance`."""
        for (prompt, completion), margins in zip(
            _pairs(prompts, result), greedy_margins(model_dir, _pairs(prompts, result)), strict=True
        ):
            worst = max(margins)
            assert worst <= self.greedy_tolerance, (
                f"greedy token is not the argmax of {model_dir}: it trails by {worst:.4g} nats "
                f"(prompt {prompt[-5:]}..., completion {completion})"
            )

    # ------------------------------------------------------------------------------------ shapes

    def test_satisfies_protocol(self, generator: Generator) -> None:
        assert isinstance(generator, Generator)

    def test_result_shapes(self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels) -> None:
        import json
        from pathlib import Path

        vocab = json.loads((Path(tiny_models.base) / "config.json").read_text())["vocab_size"]
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
        result = generator.generate(prompts, params)
        assert isinstance(result, list) and len(result) == len(prompts)
        for per_prompt in result:
            assert len(per_prompt) == params.n
            for c in per_prompt:
                assert isinstance(c, Completion)
                assert isinstance(c.token_ids, tuple) and isinstance(c.logprobs, tuple)
                assert all(isinstance(t, int) and 0 <= t < vocab for t in c.token_ids)
                assert 1 <= len(c.token_ids) <= params.max_new_tokens
                assert len(c.logprobs) == len(c.token_ids)
                assert all(isinstance(x, float) and math.isfinite(x) and x <= 1e-4 for x in c.logprobs)
                assert c.finish_reason in ("stop", "length")
                if c.finish_reason == "length":
                    assert len(c.token_ids) == params.max_new_tokens

    def test_single_token_and_empty_batch(self, generator: Generator, prompts: list[list[int]]) -> None:
        (per_prompt,) = generator.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=1, seed=0))
        assert [len(c.token_ids) for c in per_prompt] == [1, 1]
        assert generator.generate([], SamplingParams(n=2, max_new_tokens=4)) == []

    def test_prompt_order_is_kept(self, generator: Generator, prompts: list[list[int]]) -> None:
        forward = _tokens(generator.generate(prompts, _greedy()))
        backward = _tokens(generator.generate(prompts[::-1], _greedy()))
        assert backward == forward[::-1]

    # ------------------------------------------------------------------------------------ sampling

    def test_n_samples_differ(self, generator: Generator, prompts: list[list[int]]) -> None:
        result = generator.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=8))
        for per_prompt in result:
            # with top-1 probability ~0.2 per step, two equal 8-token samples are a ~1e-5 event
            assert len({c.token_ids for c in per_prompt}) == 4, _tokens([per_prompt])

    def test_seed_makes_sampling_reproducible(self, generator: Generator, prompts: list[list[int]]) -> None:
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1234)
        first = generator.generate(prompts, params)
        assert generator.generate(prompts, params) == first
        other = generator.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=4321))
        assert _tokens(other) != _tokens(first)

    def test_greedy_is_deterministic_and_is_the_argmax(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        result = generator.generate(prompts, SamplingParams(n=3, temperature=0.0, max_new_tokens=12))
        for per_prompt in result:
            assert len({c.token_ids for c in per_prompt}) == 1, "greedy samples of one prompt differ"
        assert _tokens(generator.generate(prompts, SamplingParams(n=3, temperature=0.0, max_new_tokens=12))) == _tokens(
            result
        )
        self._assert_greedy_follows(tiny_models.base, prompts, result)

    # ------------------------------------------------------------------------------------ stopping

    def test_stop_token_ids(self, generator: Generator, prompts: list[list[int]]) -> None:
        (free,) = generator.generate(prompts[:1], _greedy(12))
        tokens = free[0].token_ids
        # stop on the latest token among the first four that has not appeared before it
        index = max(i for i in range(min(4, len(tokens))) if tokens[i] not in tokens[:i])
        (stopped,) = generator.generate(prompts[:1], _greedy(12, stop_token_ids=(tokens[index],)))
        assert stopped[0].token_ids == tokens[: index + 1]
        assert stopped[0].finish_reason == "stop"
        assert len(stopped[0].logprobs) == index + 1

    def test_stops_at_eos(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels, eos_id: int
    ) -> None:
        """With weights that make EOS likely (p ~ 0.2 per step), completions end at EOS, EOS included."""
        max_new = 16
        self._push(generator, tiny_models.eos)
        try:
            result = generator.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=max_new, seed=0))
        finally:
            self._push(generator, tiny_models.base)
        completions = [c for per_prompt in result for c in per_prompt]
        for c in completions:
            assert eos_id not in c.token_ids[:-1], f"tokens continue after EOS: {c.token_ids}"
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos_id
            else:
                assert len(c.token_ids) == max_new and c.token_ids[-1] != eos_id
        stopped = [c for c in completions if c.finish_reason == "stop"]
        assert len(stopped) >= len(completions) // 2, "EOS should end most completions (pushed via update_weights)"
        assert len({len(c.token_ids) for c in stopped}) > 1, "rows of one batch should stop at different steps"

    # ------------------------------------------------------------------------------------ logprobs

    @pytest.fixture(scope="class")
    def logprob_cases(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> dict[str, tuple[list[list[Completion]], list[list[float]]]]:
        """Generator completions and reference logprobs for each case in _LOGPROB_CASES (one reference run)."""
        results = {name: generator.generate(prompts, params) for name, params in _LOGPROB_CASES.items()}
        jobs = [
            (_pairs(prompts, results[name]), params.temperature if params.temperature > 0 else 1.0)
            for name, params in _LOGPROB_CASES.items()
        ]
        expected = reference_logprobs(self._reference_kind(), tiny_models.base, jobs)
        return {name: (results[name], refs) for name, refs in zip(_LOGPROB_CASES, expected, strict=True)}

    @pytest.mark.parametrize("case", list(_LOGPROB_CASES))
    def test_logprobs_match_reference(
        self, case: str, logprob_cases: dict[str, tuple[list[list[Completion]], list[list[float]]]]
    ) -> None:
        """Generator logprobs equal the reference's on softmax(logits / T) before top-k/top-p (T=1 for greedy).

        Tolerance: mean over tokens of exp(|delta|) < logprob_mismatch_tolerance (1.01: ~1% average
        probability ratio error) and max |delta| < logprob_max_abs_diff (0.05 nats).
        """
        result, expected = logprob_cases[case]
        completions = [c for per_prompt in result for c in per_prompt]
        assert [len(r) for r in expected] == [len(c.token_ids) for c in completions]
        deltas = [
            abs(got - want)
            for c, refs in zip(completions, expected, strict=True)
            for got, want in zip(c.logprobs, refs, strict=True)
        ]
        mismatch = sum(math.exp(d) for d in deltas) / len(deltas)
        kind = self._reference_kind()
        print(f"[{case}] logprob reference: {kind}; mean exp|delta| = {mismatch:.6f}; max |delta| = {max(deltas):.3g}")
        assert mismatch < self.logprob_mismatch_tolerance, f"mean exp|delta| {mismatch:.4f} vs {kind} reference"
        assert max(deltas) < self.logprob_max_abs_diff, f"max |delta| {max(deltas):.4f} vs {kind} reference"

    # ------------------------------------------------------------------------------------ weights

    def test_update_weights_changes_outputs(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        """Greedy output follows pushed weights (and comes back with the old ones); the iterator is read once."""
        before = generator.generate(prompts, _greedy())
        pulled: list[str] = []

        def one_pass() -> Iterator[tuple[str, object]]:
            for name, tensor in iter_safetensors(tiny_models.other):
                pulled.append(name)
                yield name, tensor

        weights = one_pass()
        generator.update_weights(weights)  # type: ignore[arg-type]
        try:
            assert next(weights, None) is None, "update_weights must consume the whole iterator"
            assert len(pulled) == len(set(pulled)) == len(list(iter_safetensors(tiny_models.other)))
            after = generator.generate(prompts, _greedy())
            assert _tokens(after) != _tokens(before), "outputs did not change after update_weights"
            self._assert_greedy_follows(tiny_models.other, prompts, after)
            # the check discriminates: the new tokens are not what the old weights would pick
            old_margins = greedy_margins(tiny_models.base, _pairs(prompts, after))
            assert max(max(m) for m in old_margins) > 10 * self.greedy_tolerance
        finally:
            self._push(generator, tiny_models.base)
        assert _tokens(generator.generate(prompts, _greedy())) == _tokens(before), "restoring the weights failed"

    def test_sleep_then_wake_up_keeps_weights(self, generator: Generator, prompts: list[list[int]]) -> None:
        before = _tokens(generator.generate(prompts, _greedy()))
        generator.sleep()
        generator.wake_up()
        assert _tokens(generator.generate(prompts, _greedy())) == before

    # ------------------------------------------------------------------------------------ streaming

    def _assert_same(self, got: list[Completion], want: list[Completion], what: str) -> None:
        assert [c.token_ids for c in got] == [c.token_ids for c in want], f"{what}: tokens differ from the batch path"
        assert [c.finish_reason for c in got] == [c.finish_reason for c in want], what
        for a, b in zip(got, want, strict=True):
            assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0.0) <= (
                self.stream_logprob_abs_diff
            ), f"{what}: logprobs differ from the batch path"

    def test_stream_matches_batch(
        self, generator: Generator, stream: StreamingGenerator, prompts: list[list[int]]
    ) -> None:
        """Requests submitted together with the same (seeded) params come back as one batch call would return them."""
        params = SamplingParams(n=2, temperature=1.0, top_k=20, max_new_tokens=8, seed=77)
        expected = generator.generate(prompts, params)
        ids = [f"same-{i}" for i in range(len(prompts))]
        stream.submit([GenerationRequest(i, p, params) for i, p in zip(ids, prompts, strict=True)])
        assert stream.num_pending() == len(prompts)
        got, _ = _collect_all(stream, ids)
        assert stream.num_pending() == 0
        for request_id, want in zip(ids, expected, strict=True):
            assert len(got[request_id]) == params.n
            self._assert_same(got[request_id], want, request_id)

    def test_stream_honours_per_request_max_new_tokens(
        self, generator: Generator, stream: StreamingGenerator, prompts: list[list[int]]
    ) -> None:
        limits = {"limit-2": (0, 2), "limit-9": (1, 9), "limit-5": (2, 5), "limit-12": (0, 12)}
        stream.submit([GenerationRequest(i, prompts[p], _greedy(m)) for i, (p, m) in limits.items()])
        got, _ = _collect_all(stream, list(limits))
        for request_id, (p, limit) in limits.items():
            (c,) = got[request_id]
            assert 1 <= len(c.token_ids) <= limit, f"{request_id}: {len(c.token_ids)} tokens"
            assert c.finish_reason == "stop" or len(c.token_ids) == limit
            assert len(c.logprobs) == len(c.token_ids)
            self._assert_same([c], generator.generate([prompts[p]], _greedy(limit))[0], request_id)
        short, long = got["limit-2"][0].token_ids, got["limit-12"][0].token_ids
        assert long[: len(short)] == short, "a greedy completion with a smaller limit is a prefix of a longer one"

    def test_stream_keeps_ids_right_in_any_order(
        self, generator: Generator, stream: StreamingGenerator, prompts: list[list[int]]
    ) -> None:
        """Requests finish in any order; each id gets its own completions (same prompt, different seeds here)."""
        requests = [
            GenerationRequest("slow", prompts[2], _greedy(12)),
            GenerationRequest("seed-1", prompts[0], SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=1)),
            GenerationRequest("fast", prompts[1], _greedy(1)),
            GenerationRequest("seed-2", prompts[0], SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=2)),
        ]
        stream.submit(requests)
        with pytest.raises(GenerationRequestError, match="'fast' is already pending"):
            stream.submit([GenerationRequest("new", prompts[0]), GenerationRequest("fast", prompts[0])])
        assert stream.num_pending() == len(requests), "a refused submit() must queue none of its requests"
        got, order = _collect_all(stream, [r.id for r in requests])
        assert sorted(order) == sorted(r.id for r in requests)
        for r in requests:
            self._assert_same(got[r.id], generator.generate([r.prompt_ids], r.params)[0], r.id)
        assert got["seed-1"] != got["seed-2"]
        assert stream.collect(min_results=1) == [], "collect() with nothing pending returns at once"
        stream.submit([GenerationRequest("poll", prompts[0], _greedy(2))])
        polled = stream.collect(min_results=1, timeout_s=0)
        rest, _ = _collect_all(stream, ["poll"]) if not polled else ({}, [])
        assert [r.request_id for r in polled] + list(rest) == ["poll"]

    def test_stream_reports_the_pushed_version(
        self, stream: StreamingGenerator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        for version in (7, 8):
            self._push(stream, tiny_models.base, version=version)
            batch = stream.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=4, seed=0))
            stream.submit([GenerationRequest(f"version-{version}", prompts[1], SamplingParams(n=2, max_new_tokens=4))])
            ((_, streamed),) = stream.collect(min_results=1)
            for c in [*batch[0], *streamed]:
                assert c.policy_version == version and c.version_switches == ()
                assert c.token_versions() == (version,) * len(c.token_ids)

    def test_incomplete_push_refuses_to_serve_until_a_push_completes(
        self, stream: StreamingGenerator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        before = _tokens(stream.generate(prompts, _greedy()))

        def cut_off() -> Iterator[tuple[str, object]]:
            for i, (name, tensor) in enumerate(iter_safetensors(tiny_models.other)):
                if i == 3:
                    raise RuntimeError("simulated: the weight push was cut off")
                yield name, tensor

        with pytest.raises(Exception):  # noqa: B017 - whatever the engine makes of it; the refusal is tested
            stream.update_weights(cut_off(), version=11)  # type: ignore[arg-type]
        try:
            with pytest.raises(WeightPushIncompleteError, match="version 11"):
                stream.generate(prompts, _greedy())
            with pytest.raises(WeightPushIncompleteError, match="version 11"):
                stream.submit([GenerationRequest("refused", prompts[0], _greedy())])
            with pytest.raises(WeightPushIncompleteError, match="version 11"):
                stream.collect(min_results=1)
        finally:
            self._push(stream, tiny_models.base, version=12)
        assert stream.num_pending() == 0
        assert _tokens(stream.generate(prompts, _greedy())) == before

    def test_partial_rollout_continues_under_new_weights(
        self, generator: Generator, stream: StreamingGenerator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        """A request in flight across update_weights keeps its tokens, records the switch, and samples the rest
        from the new weights given the whole prefix (its KV cache recomputed, not kept from the old weights)."""
        if not stream.partial_rollouts:
            pytest.skip(f"{type(stream).__name__} finishes in-flight requests before a weight update")
        limit = 24
        (reference,) = generator.generate(prompts[0:1], _greedy(limit))[0]
        assert reference.finish_reason == "length", "the suite's base model should not stop early here"
        self._push(stream, tiny_models.base, version=20)
        stream.submit([GenerationRequest("long", prompts[0], _greedy(limit)),
                       GenerationRequest("short", prompts[1], _greedy(2))])  # fmt: skip
        first = stream.collect(min_results=1)
        assert [r.request_id for r in first] == ["short"]
        self._push(stream, tiny_models.other, version=21)
        try:
            got, _ = _collect_all(stream, ["long"])
        finally:
            self._push(stream, tiny_models.base, version=22)
        (c,) = got["long"]
        assert c.policy_version == 20 and len(c.version_switches) == 1, c.version_switches
        ((switch, version),) = c.version_switches
        assert version == 21 and 0 < switch < len(c.token_ids) == limit
        assert c.token_ids[:switch] == reference.token_ids[:switch]
        (margins,) = greedy_margins(tiny_models.other, [(prompts[0], list(c.token_ids))])
        assert max(margins[switch:]) <= self.greedy_tolerance, "tokens after the switch must follow the new weights"
        ((old_refs,), (new_refs,)) = [
            reference_logprobs(self._reference_kind(), model, [([(prompts[0], list(c.token_ids))], 1.0)])[0]
            for model in (tiny_models.base, tiny_models.other)
        ]
        expected = [*old_refs[:switch], *new_refs[switch:]]
        assert max(abs(a - b) for a, b in zip(c.logprobs, expected, strict=True)) < self.logprob_max_abs_diff
