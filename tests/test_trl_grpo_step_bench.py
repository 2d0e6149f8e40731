"""benchmarks/trl_grpo_step.py's pure helpers: the batch layout of one round, the torchrun-like environment, and the
round timer's phase split (with a fake clock and a fake trainer: no TRL needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports grpo_step.py beside it, as when run as a script
    spec = importlib.util.spec_from_file_location("trl_grpo_step_bench", BENCHMARKS / "trl_grpo_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.modules.pop("grpo_step", None)
        sys.path.remove(str(BENCHMARKS))


def test_batch_layout_is_one_generation_per_optimizer_step(bench):
    assert bench.batch_layout(16, 8, 16) == {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 8,
                                             "steps_per_generation": 8, "num_generations": 8}
    assert bench.batch_layout(16, 8, 128)["gradient_accumulation_steps"] == 1
    with pytest.raises(ValueError, match="--micro-batch 24 must divide prompts x samples = 128"):
        bench.batch_layout(16, 8, 24)


def test_distributed_env_fills_only_what_is_missing(bench):
    filled = bench.distributed_env({"MASTER_PORT": "1234", "RANK": "0"})
    assert filled == {"LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    port = int(bench.distributed_env({})["MASTER_PORT"])
    assert 0 < port < 65536


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTrainer:
    """Phases nested as in TRL: generate-and-score calls generate, which calls the weight sync."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def sync_weights(self) -> None:
        self.clock.now += 0.5

    def _generate_single_turn(self) -> tuple[list[list[int]], None]:
        self.sync_weights()
        self.clock.now += 3.0
        return [[1] * 512, [2] * 512, [3] * 100], None

    def _generate_and_score_completions(self) -> None:
        self._generate_single_turn()
        self.clock.now += 1.0


def test_round_timer_splits_the_nested_phases(bench):
    clock = FakeClock()
    trainer = FakeTrainer(clock)
    timer = bench.RoundTimer(lambda: None, clock)
    assert timer.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
    assert timer.wrap(trainer, "_generate_single_turn", "generate", timer.count_completions)
    assert timer.wrap(trainer, "sync_weights", "sync")
    assert not timer.wrap(trainer, "no_such_method", "x")
    timer.start()
    trainer._generate_and_score_completions()
    clock.now += 4.5  # the micro-batches and the optimizer step
    row = timer.end_round()
    assert row["time/weight_sync"] == 0.5
    assert row["time/generate"] == 3.0
    assert row["time/score_logprobs"] == 1.0
    assert row["time/train"] == 4.5
    assert row["wall/round"] == 9.0
    assert row["completion_tokens"] == 1124.0
    assert row["completion_tokens_per_s"] == pytest.approx(1124 / 9)
    assert (row["length/median"], row["length/max"]) == (512.0, 512.0)
    clock.now += 2.0  # a round with no generation: everything is train, no tokens
    second = timer.end_round()
    assert (second["wall/round"], second["time/train"], second["completion_tokens"]) == (2.0, 2.0, 0.0)
