"""The builtin `guess` environment: the game's rules, its warm-up dialogues, that a warm-up dialogue is laid out as
tokens exactly as a rollout lays it out, and (slow) that `rlx run --env guess` learns."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from rlx.builtin.guess import (
    GuessConfig,
    GuessEnvironment,
    GuessEpisode,
    binary_search_dialogue,
    careless_dialogue,
    parse_guess,
)
from rlx.data import PromptEncoder
from rlx.interfaces import Completion, EpisodeEnvironment, Observation, Score, Turn
from rlx.metrics import read_metrics
from rlx.rollout import EpisodeCollector
from rlx.testing import EnvironmentConformance


class TestGuessConformance(EnvironmentConformance):
    @pytest.fixture(scope="class")
    def make_environment(self):
        return lambda seed: GuessEnvironment(GuessConfig(train_size=64), seed=seed)


def play(episode: GuessEpisode, guesses: list[str]) -> list[Observation | Score]:
    return [episode.step(Turn(g, (), "stop", i)) for i, g in enumerate(guesses)]


def test_an_episode_answers_higher_or_lower_with_what_is_still_possible():
    results = play(GuessEpisode(secret=6, low=1, high=7, max_guesses=3), ["4", "7", "6"])
    assert [r.messages[0]["content"] for r in results[:2]] == ["higher, 5 to 7", "lower, 5 to 6"]
    assert results[2] == Score(1.0, "correct")


def test_an_episode_ends_wrong_after_its_guesses_and_no_answer_on_anything_but_a_number():
    assert play(GuessEpisode(6, 1, 7, 2), ["1", "2"])[-1] == Score(0.0, "wrong")
    assert play(GuessEpisode(6, 1, 7, 3), ["six"]) == [Score(0.0, "no_answer")]
    assert [parse_guess(t) for t in (" 12 ", "5.", "5 6", "", "x3")] == [12, 5, None, None, None]


def test_default_guesses_are_what_binary_search_needs():
    assert [GuessConfig(low=1, high=h).guesses for h in (7, 8, 15, 16)] == [3, 4, 4, 5]
    for secret in range(1, 16):  # binary search always wins, within exactly that many guesses
        dialogue = binary_search_dialogue(secret, 1, 15, 4)
        guesses = [m["content"] for m in dialogue if m["role"] == "assistant"]
        assert play(GuessEpisode(secret, 1, 15, 4), guesses)[-1] == Score(1.0, "correct")


def test_warm_up_distractors_are_lost_games():
    rng = random.Random(0)
    for secret in range(1, 8):
        dialogue = careless_dialogue(secret, 1, 7, 3, rng)
        guesses = [m["content"] for m in dialogue if m["role"] == "assistant"]
        assert len(guesses) == 3 and play(GuessEpisode(secret, 1, 7, 3), guesses)[-1] == Score(0.0, "wrong")


def test_environment_problems_are_seeded_and_carry_the_warm_up_dialogues():
    env = GuessEnvironment(GuessConfig(train_size=8, validation_size=4, distractors=2), seed=3)
    assert isinstance(env, EpisodeEnvironment)
    train = env.problems("train")
    assert [p.answer for p in train] == [p.answer for p in GuessEnvironment(GuessConfig(train_size=8), seed=3).problems("train")]
    p = train[0]
    assert p.metadata["demonstration"] == binary_search_dialogue(int(p.answer), 1, 7, 3)
    assert len(p.metadata["distractors"]) == 2 and len(env.problems("validation")) == 4
    assert env.score([p, p], [p.answer, "nope"]) == [Score(1.0, "correct"), Score(0.0, "no_answer")]


class ReplayGenerator:
    """Samples the next assistant turn of a fixed dialogue (canonical token ids + EOS) for every prompt."""

    def __init__(self, tokenizer, dialogue) -> None:
        self.turns = [tokenizer.encode(m["content"], add_special_tokens=False) + [tokenizer.eos_token_id]
                      for m in dialogue if m["role"] == "assistant"]
        self.calls = 0

    def generate(self, prompts, params):
        ids = self.turns[self.calls]
        self.calls += 1
        return [[Completion(tuple(ids), (-0.5,) * len(ids), "stop")] for _ in prompts]


def test_warm_up_lays_a_dialogue_out_exactly_as_a_rollout_does():
    from rlx.models.embedded import _sft_batch
    from rlx.models.tiny import build_tokenizer, default_corpus

    tokenizer = build_tokenizer(default_corpus())
    env = GuessEnvironment(GuessConfig(train_size=4), seed=0)
    problem = next(p for p in env.problems("train") if len(p.metadata["demonstration"]) > 1)
    dialogue = problem.metadata["demonstration"]
    ids, labels = _sft_batch(tokenizer, [problem], [dialogue], tokenizer.pad_token_id)
    collector = EpisodeCollector(ReplayGenerator(tokenizer, dialogue), env, PromptEncoder(tokenizer, 256))
    sample = collector.collect([problem], __import__("rlx").SamplingParams(n=1, max_new_tokens=8))[0][0]
    assert sample.score.status == "correct"
    assert ids[0].tolist() == [*sample.prompt_ids, *sample.response_ids]
    trained = [label != -100 for label in labels[0].tolist()]
    assert trained == [False] * len(sample.prompt_ids) + list(sample.loss_mask)  # the same tokens are the model's


@pytest.mark.slow
def test_rlx_run_env_guess_learns(tmp_path):
    """`rlx run --env guess` through the CLI (the embedded tiny model, built on first use), kept short with a higher
    learning rate: the reward's 10-step mean rises clearly above where it started. (The default run's time to
    +0.3 is measured by benchmarks/guess_reward.py, figures in docs/benchmarks.md.)"""
    out = tmp_path / "guess"
    proc = subprocess.run([sys.executable, "-m", "rlx.cli", "run", "--env", "guess", f"output_dir={out}", "steps=40",
                           "trainer.lr=1e-3", "validation.period=0", "checkpoint.export_hf=false",
                           "logging.progress=false", "logging.tensorboard=false"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out / "metrics.jsonl")
    rewards = [m["reward/mean"] for m in metrics]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last >= first + 0.1, rewards
    assert all(m["episode/turns_mean"] > 1.0 for m in metrics)  # episodes are multi-turn
    assert all(0 < m["episode/observation_token_frac"] < 1 for m in metrics)
