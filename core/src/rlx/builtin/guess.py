"""The `guess` environment: a toy multi-turn game. The model guesses a hidden number, hears "higher" or "lower"
(and the numbers still possible) after each wrong guess, and is rewarded for finding it within `max_guesses`
turns (binary search always does).

Small enough for the embedded tiny model to learn on a laptop CPU in minutes, so the whole multi-turn path
(episodes, observations as context tokens, per-episode limits) runs in CI. Cheap to import (pydantic only).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlx.interfaces import Message, Observation, Problem, Score, Split, Turn

_NUMBER = re.compile(r"\s*(-?\d{1,6})\s*\.?\s*")


class GuessConfig(BaseModel):
    """Options of the `guess` environment (the `env:` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    low: int = Field(1, description="smallest possible secret")
    high: int = Field(7, description="largest possible secret")
    max_guesses: int | None = Field(
        None, gt=0, description="guesses per episode (null: what binary search needs, ceil(log2(high - low + 2)))"
    )
    train_size: int = Field(2048, gt=0, description="train problems (secrets drawn with the run seed)")
    validation_size: int = Field(64, ge=0, description="validation problems (drawn with validation_seed)")
    validation_seed: int = Field(1234, description="fixed, so validation sets agree across runs with other seeds")
    distractors: int = Field(
        4, ge=0, description="careless-guesser dialogues per problem (lost games), for the embedded model's noisy warm-up"
    )

    @model_validator(mode="after")
    def _check_range(self) -> GuessConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    @property
    def guesses(self) -> int:
        return self.max_guesses or math.ceil(math.log2(self.high - self.low + 2))


def prompt(low: int, high: int) -> str:
    return f"Guess my number, {low} to {high}."


def parse_guess(text: str) -> int | None:
    """The turn's number, when the turn is just a number (a trailing period is allowed)."""
    match = _NUMBER.fullmatch(text)
    return int(match.group(1)) if match else None


class Game:
    """The referee: after a wrong guess it says "higher" or "lower" and which numbers are still possible.

    Stating the range keeps each decision local to the last feedback (guess its middle), which a tiny model
    learns in minutes; the game is still multi-turn (every guess depends on the feedback before it)."""

    def __init__(self, secret: int, low: int, high: int) -> None:
        self.secret, self.low, self.high = secret, low, high

    def answer(self, guess: int) -> str:
        if guess < self.secret:
            self.low = max(self.low, guess + 1)
            return f"higher, {self.low} to {self.high}"
        self.high = min(self.high, guess - 1)
        return f"lower, {self.low} to {self.high}"


class GuessEpisode:
    """One game: implements `rlx.interfaces.Episode`."""

    def __init__(self, secret: int, low: int, high: int, max_guesses: int) -> None:
        self.game = Game(secret, low, high)
        self.max_guesses = max_guesses
        self.guesses = 0

    def step(self, turn: Turn) -> Observation | Score:
        guess = parse_guess(turn.text)
        if guess is None:
            return Score(0.0, "no_answer")
        self.guesses += 1
        if guess == self.game.secret:
            return Score(1.0, "correct")
        if self.guesses >= self.max_guesses:
            return Score(0.0, "wrong")
        return Observation(({"role": "user", "content": self.game.answer(guess)},))


def _dialogue(secret: int, low: int, high: int, max_guesses: int, choose: Callable[[Game], int]) -> list[Message]:
    game, out = Game(secret, low, high), []
    for turn in range(max_guesses):
        guess = choose(game)
        out.append({"role": "assistant", "content": str(guess)})
        if guess == secret or turn == max_guesses - 1:
            break
        out.append({"role": "user", "content": game.answer(guess)})
    return out


def binary_search_dialogue(secret: int, low: int, high: int, max_guesses: int) -> list[Message]:
    """The ideal game as chat messages after the prompt (assistant guesses, user feedback), ending on a guess."""
    return _dialogue(secret, low, high, max_guesses, lambda game: (game.low + game.high) // 2)


def careless_dialogue(secret: int, low: int, high: int, max_guesses: int, rng: random.Random) -> list[Message]:
    """A careless guesser's lost game: every guess uniform over the wrong numbers, whatever the feedback said (the
    warm-up's distractor: a dialogue of the right form that does not solve the problem)."""
    wrong = [n for n in range(low, high + 1) if n != secret]
    return _dialogue(secret, low, high, max_guesses, lambda game: rng.choice(wrong))


class GuessEnvironment:
    """Implements `rlx.interfaces.Environment` with the episode capability (`start_episode`)."""

    def __init__(self, config: GuessConfig, *, seed: int) -> None:
        self.config = config
        c = config
        self._splits: dict[str, list[Problem]] = {
            "train": self._make("train", c.train_size, seed),
            "validation": self._make("validation", c.validation_size, c.validation_seed),
        }

    def _make(self, split: Split, count: int, seed: int) -> list[Problem]:
        c, rng = self.config, random.Random(seed)
        careless = random.Random(seed + 1)  # its own stream: the secrets do not depend on `distractors`
        messages = ({"role": "user", "content": prompt(c.low, c.high)},)
        out = []
        for i in range(count):
            secret = rng.randint(c.low, c.high)
            metadata = {
                "demonstration": binary_search_dialogue(secret, c.low, c.high, c.guesses),
                "distractors": [careless_dialogue(secret, c.low, c.high, c.guesses, careless) for _ in range(c.distractors)],
            }
            out.append(Problem(id=f"guess-{split}-{i}", messages=messages, answer=str(secret), metadata=metadata))
        return out

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in self._splits:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        return self._splits[split]

    def start_episode(self, problem: Problem) -> GuessEpisode:
        c = self.config
        return GuessEpisode(int(problem.answer), c.low, c.high, c.guesses)

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """Single-turn use (e.g. a tool that scores completions): the completion is the first and only guess."""
        out = []
        for problem, completion in zip(problems, completions, strict=True):
            episode = GuessEpisode(int(problem.answer), self.config.low, self.config.high, 1)
            result = episode.step(Turn(completion, (), "stop", 0))
            out.append(result if isinstance(result, Score) else Score(0.0, "wrong"))
        return out

    def close(self) -> None:
        pass
