"""benchmarks/grpo_step.py's long-tailed lengths: the seeded cap draw and the wrapper that serves them through the
streaming API (with a fake batch-only generator, so it runs in milliseconds)."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from rlx.interfaces import Completion, SamplingParams

from .test_loop import FakeGenerator

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("grpo_step_bench", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/pydantic look the module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


class LengthEchoGenerator(FakeGenerator):
    """Batch-only, like a random-weight model that never samples EOS: every completion runs to max_new_tokens.
    Token k of a completion is (prompt's first token, seed, sample index); logprob -0.5 - k / 100. Its
    update_weights takes no version (an older plugin)."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(prompts), params))  # (number of prompts, params) per generate call
        return [
            [
                Completion(
                    token_ids=tuple(hash((p[0], params.seed, j, k)) % 1000 for k in range(params.max_new_tokens)),
                    logprobs=tuple(-0.5 - k / 100 for k in range(params.max_new_tokens)),
                    finish_reason="length",
                )
                for j in range(params.n)
            ]
            for p in prompts
        ]


def test_longtail_lengths_are_seeded_clipped_and_long_tailed(bench) -> None:
    lengths = bench.longtail_lengths(8192, 20_000, seed=3)
    assert lengths == bench.longtail_lengths(8192, 20_000, seed=3)
    assert lengths != bench.longtail_lengths(8192, 20_000, seed=4)
    assert min(lengths) >= 1 and max(lengths) == 8192
    # lognormal(median 2500, sigma 0.8) clipped at 8192: median ~2500, P(cap) = P(Z > ln(8192/2500)/0.8) = 6.9%
    assert 2400 <= statistics.median(lengths) <= 2600
    assert 0.06 <= lengths.count(8192) / len(lengths) <= 0.08
    # most completions are far below the cap: the step waits for a few long ones
    assert sum(1000 <= n <= 3000 for n in lengths) / len(lengths) > 0.45
    tiny = bench.longtail_lengths(64, 5_000, seed=0)
    assert min(tiny) >= 1 and max(tiny) == 64 and 18 <= statistics.median(tiny) <= 21


def test_wrapper_caps_each_completion_at_its_drawn_length(bench) -> None:
    fake = LengthEchoGenerator()
    wrapper = bench.LongTailGenerator(fake, seed=0)
    prompts = [[10 + i, 1, 2] for i in range(6)]
    params = SamplingParams(n=8, max_new_tokens=64, seed=1234)
    caps = wrapper.caps(len(prompts), params)
    out = wrapper.generate(prompts, params)

    assert [[len(c.token_ids) for c in group] for group in out] == caps
    assert all(1 <= cap <= 64 for row in caps for cap in row)
    # a prompt's samples of equal cap are one request (n = their count); one generate call per distinct (cap, n)
    # over the whole batch, whatever the prompt
    requests = {(cap, row.count(cap)): 0 for row in caps for cap in row}
    for row in caps:
        for cap in set(row):
            requests[cap, row.count(cap)] += 1
    assert sorted((p.max_new_tokens, p.n, count) for count, p in fake.calls) == sorted(
        (cap, n, count) for (cap, n), count in requests.items())
    assert len(fake.calls) < 6 * 8
    # logprobs come back as the engine made them; different caps, different seeds (no shared token streams)
    assert all(c.logprobs == tuple(-0.5 - k / 100 for k in range(len(c.token_ids))) for g in out for c in g)
    seeds = {p.max_new_tokens: p.seed for _, p in fake.calls}
    assert len(set(seeds.values())) == len(seeds) == len({cap for row in caps for cap in row})


def test_caps_are_deterministic_per_step_seed_and_bounded_by_the_call(bench) -> None:
    params = SamplingParams(n=8, max_new_tokens=4096, seed=7)
    first = bench.LongTailGenerator(LengthEchoGenerator(), seed=0)
    again = bench.LongTailGenerator(LengthEchoGenerator(), seed=0)
    assert first.caps(4, params) == again.caps(4, params)
    assert first.caps(4, params) != first.caps(4, SamplingParams(n=8, max_new_tokens=4096, seed=8))
    assert first.caps(4, params) != bench.LongTailGenerator(LengthEchoGenerator(), seed=1).caps(4, params)
    # the call's max_new_tokens (grpo.max_new_tokens, or less where the context is short) is the cap
    short = first.caps(4, SamplingParams(n=8, max_new_tokens=16, seed=7))
    assert max(max(row) for row in short) <= 16


def test_wrapper_keeps_policy_versions_across_weight_pushes(bench) -> None:
    wrapper = bench.LongTailGenerator(LengthEchoGenerator(), seed=0)
    params = SamplingParams(n=4, max_new_tokens=32, seed=1)
    assert {c.policy_version for g in wrapper.generate([[1, 2]], params) for c in g} == {None}
    wrapper.update_weights(iter([]), version=3)  # the adapter takes the version the old-style plugin cannot
    assert {c.policy_version for g in wrapper.generate([[1, 2], [3]], params) for c in g} == {3}


def test_staleness_values_parses_a_comma_list(bench) -> None:
    import argparse

    assert bench.staleness_values("0,1") == [0, 1]
    assert bench.staleness_values("2") == [2]
    for bad in ("", "0,-1", "0,0", "one"):
        with pytest.raises(argparse.ArgumentTypeError, match="--max-staleness"):
            bench.staleness_values(bad)


def test_comparison_rates_steady_steps_against_the_synchronous_run(bench) -> None:
    def step(tokens: float, wall: float, train: float) -> dict[str, float]:
        return {"completion_tokens": tokens, "wall/step": wall, "time/train": train}

    runs = [{"max_staleness": 0, "steps": [step(100, 50, 9), step(100, 4, 3), step(100, 6, 3)]},
            {"max_staleness": 1, "steps": [step(100, 50, 9), step(100, 2, 3), step(100, 3, 3)]}]
    for run in runs:
        run["median_steady"] = bench.steady_median(run["steps"], warmup=1)
    sync, one_off = bench.comparison(runs, warmup=1)
    assert sync["step_s"] == 5.0 and sync["completion_tokens_per_s"] == 20.0 and sync["speedup"] == 1.0
    assert one_off["step_s"] == 2.5 and one_off["completion_tokens_per_s"] == 40.0 and one_off["speedup"] == 2.0
    assert one_off["time/train"] == 3.0 and one_off["time/wait_rollouts"] is None


def test_engine_step_timer_splits_generate_into_engine_steps(bench):
    class Stepping:
        def __init__(self) -> None:
            self.stepped = 0

        def _step(self) -> None:
            self.stepped += 1

    generator = Stepping()
    timer = bench.EngineStepTimer(generator)
    for _ in range(3):
        generator._step()
    first = timer.take()
    assert generator.stepped == 3 and first["gen/engine_steps"] == 3.0 and first["gen/engine_s"] >= 0
    generator._step()
    assert timer.take()["gen/engine_steps"] == 1.0  # counts since the last take
    assert bench.EngineStepTimer(FakeGenerator()).take() == {}  # a generator without engine steps: nothing


def test_gc_timer_counts_the_collections_of_each_step(bench):
    import gc

    timer = bench.GcTimer()
    try:
        timer.take()
        gc.collect()  # a full collection
        first = timer.take()
        assert first["host/gc_full"] >= 1 and first["host/gc_full_s"] > 0 and first["host/gc_s"] >= first["host/gc_full_s"]
        assert timer.take()["host/gc_full"] == 0  # counts since the last take
    finally:
        timer.close()
    assert timer._callback not in gc.callbacks


def test_weight_load_seconds_reads_the_generators_own_timing(bench):
    class Timed:
        last_update = {"weight_update/seconds": 0.25, "weight_update/transport": "direct"}

    assert bench.weight_load_seconds(Timed()) == {"gen/weight_load_s": 0.25}
    assert bench.weight_load_seconds(FakeGenerator()) == {}  # no timing of its own: nothing
