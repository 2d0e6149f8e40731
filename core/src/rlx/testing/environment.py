"""`EnvironmentConformance`: the pytest suite every `Environment` implementation passes (see `rlx.testing`).

It checks what the core relies on: problems are typed, picklable (Ray ships them to scorer actors), stable for a
seed (exact resume replays the same data) and uniquely named across splits (prompts are cached by id); `score`
returns one finite, typed Score per completion in order, never raises on whatever a model writes, and finishes
within a time bound. Problems that carry the embedded tiny model's warm-up keys (`metadata['solution']`,
`metadata['distractors']`) are checked to mean what the warm-up assumes.

Every test scores through `score_completions`, the one place a later contract (multi-turn episodes) hooks into.
"""

from __future__ import annotations

import math
import pickle
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import pytest

from rlx.interfaces import Environment, Problem, Score
from rlx.testing.episodes import EpisodeConformance

MakeEnvironment = Callable[[int], Environment]

ROLES = ("system", "user", "assistant")


def garbage_completions(seed: int = 0) -> dict[str, str]:
    """What a model may write that no environment should choke on, by name."""
    rng = random.Random(seed)
    # any code point but the surrogates (a tokenizer's decode never yields a lone surrogate)
    code_points = [c for c in (rng.randrange(0x20, 0x110000) for _ in range(600)) if not 0xD800 <= c < 0xE000]
    return {
        "empty": "",
        "whitespace": " \n\t \r\n",
        "control-bytes": "".join(chr(i) for i in range(32)) + "\x7f\x00",
        "random-unicode": "".join(chr(c) for c in code_points),
        "replacement-chars": "\ufffd" * 64,
        "huge": "the answer is " * 20_000,
        "unbalanced-braces": "\\boxed{" * 500 + "1",
        "deep-nesting": "(" * 2000 + "1" + ")" * 2000,
        "long-number": "\\boxed{" + "9" * 5000 + "}",
        "markup": "<think>" * 50 + "</think></think>\\boxed{}\\boxed{\\frac{}{}}",
    }


def check_scores(scores: object, expected: int) -> list[Score]:
    """The Environment contract on what `score` returns (the core checks the same in `rlx.contracts`)."""
    assert isinstance(scores, list), f"score() must return a list, got {type(scores).__name__}"
    assert len(scores) == expected, f"score() returned {len(scores)} scores for {expected} completions"
    for i, s in enumerate(scores):
        assert isinstance(s, Score), f"score()[{i}] is a {type(s).__name__}, not an rlx.Score"
        assert isinstance(s.reward, int | float) and not isinstance(s.reward, bool), f"score()[{i}].reward {s.reward!r}"
        assert math.isfinite(s.reward), f"score()[{i}].reward is {s.reward!r}: rewards must be finite"
        assert isinstance(s.status, str) and s.status, f"score()[{i}].status must be a non-empty str, got {s.status!r}"
        assert s.correct in (True, False, None), f"score()[{i}].correct must be a bool or None, got {s.correct!r}"
    return scores  # type: ignore[return-value]


def _same_problem(a: Problem, b: Problem) -> bool:
    return (a.id, a.messages, a.answer, a.metadata) == (b.id, b.messages, b.answer, b.metadata)


class EnvironmentConformance(EpisodeConformance):
    """Subclass in your test module and override the `make_environment` fixture. Multi-turn environments (with
    `start_episode`) also get the episode tests (`rlx.testing.episodes`); single-turn ones skip them, saying so.

    Class attributes a plugin may override (say why in a comment):
    """

    #: the seed `make_environment` is called with (and seed + 1 where another instance is needed).
    seed: int = 0
    #: how many problems of each split the scoring tests use.
    max_problems: int = 32
    #: `score` of one batch of `garbage_completions` must return within this many seconds (a grader stuck on
    #: adversarial output must time itself out; the default leaves room for slow machines).
    score_time_limit_s: float = 120.0

    # ------------------------------------------------------------------------------------ fixtures

    @pytest.fixture(scope="class")
    def make_environment(self) -> MakeEnvironment:
        """Override: return a callable building your environment for a seed."""
        pytest.fail(f"{type(self).__name__} must override the `make_environment` fixture (see rlx.testing)")

    @pytest.fixture(scope="class")
    def environment(self, make_environment: MakeEnvironment) -> Iterator[Environment]:
        env = make_environment(self.seed)
        yield env
        env.close()

    @pytest.fixture(scope="class")
    def train(self, environment: Environment) -> list[Problem]:
        problems = list(environment.problems("train"))
        assert problems, "problems('train') is empty: a run needs training problems"
        return problems

    @pytest.fixture(scope="class")
    def validation(self, environment: Environment) -> list[Problem]:
        return list(environment.problems("validation"))

    def score_completions(self, env: Environment, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """Score and check the result against the contract (override to drive a richer contract)."""
        return check_scores(env.score(list(problems), list(completions)), len(completions))

    def _sample(self, problems: Sequence[Problem]) -> list[Problem]:
        return list(problems[: self.max_problems])

    # ------------------------------------------------------------------------------------ problems

    def test_satisfies_protocol(self, environment: Environment) -> None:
        assert isinstance(environment, Environment)

    def test_problems_are_typed(self, train: list[Problem], validation: list[Problem]) -> None:
        for p in [*train, *validation]:
            assert isinstance(p, Problem), f"{type(p).__name__} is not an rlx.Problem"
            assert isinstance(p.id, str) and p.id, f"problem id must be a non-empty str, got {p.id!r}"
            assert isinstance(p.answer, str), f"{p.id}: answer must be a str, got {type(p.answer).__name__}"
            assert isinstance(p.metadata, dict), f"{p.id}: metadata must be a dict"
            assert p.messages, f"{p.id}: messages are empty"
            for m in p.messages:
                assert isinstance(m, dict) and set(m) >= {"role", "content"}, f"{p.id}: message {m!r}"
                assert m["role"] in ROLES and isinstance(m["content"], str), f"{p.id}: message {m!r}"

    def test_ids_are_unique_across_splits(self, train: list[Problem], validation: list[Problem]) -> None:
        counts = Counter(p.id for p in [*train, *validation])
        repeated = sorted(i for i, n in counts.items() if n > 1)
        assert not repeated, f"problem ids repeat (the core caches prompts by id): {repeated[:5]}"

    def test_problems_are_picklable(self, train: list[Problem], validation: list[Problem]) -> None:
        problems = self._sample(train) + self._sample(validation)
        restored = pickle.loads(pickle.dumps(problems))
        assert all(_same_problem(a, b) for a, b in zip(problems, restored, strict=True))

    def test_problems_are_stable_for_a_seed(self, environment: Environment, make_environment: MakeEnvironment,
                                            train: list[Problem], validation: list[Problem]) -> None:
        """The same problems, in the same order, on every call and from every instance with the same seed."""
        assert all(_same_problem(a, b) for a, b in zip(train, environment.problems("train"), strict=True))
        other = make_environment(self.seed)
        try:
            for split, mine in (("train", train), ("validation", validation)):
                theirs = list(other.problems(split))
                assert len(theirs) == len(mine), f"{split}: {len(mine)} problems, then {len(theirs)}"
                changed = [a.id for a, b in zip(mine, theirs, strict=True) if not _same_problem(a, b)]
                assert not changed, f"{split}: problems differ between two instances with seed {self.seed}: {changed[:5]}"
        finally:
            other.close()

    # ------------------------------------------------------------------------------------ scoring

    def test_score_returns_one_typed_score_per_completion(self, environment: Environment, train: list[Problem]) -> None:
        problems = self._sample(train)
        self.score_completions(environment, problems, [p.answer for p in problems])
        self.score_completions(environment, problems[:1], [""])

    def test_score_keeps_order(self, environment: Environment, train: list[Problem]) -> None:
        """Scoring a shuffled batch gives the same scores, shuffled the same way (each completion is scored as an
        answer to its own problem, wherever it sits in the batch)."""
        problems = self._sample(train)
        completions = [_good_answer(p) if i % 2 == 0 else "" for i, p in enumerate(problems)]
        in_order = self.score_completions(environment, problems, completions)
        perm = list(range(len(problems)))
        random.Random(1).shuffle(perm)
        shuffled = self.score_completions(environment, [problems[i] for i in perm], [completions[i] for i in perm])
        assert shuffled == [in_order[i] for i in perm]

    @pytest.mark.filterwarnings("ignore")  # an environment may warn about a batch it cannot grade; it must not raise
    def test_empty_completion_is_not_solved(self, environment: Environment, train: list[Problem]) -> None:
        problems = self._sample(train)
        scores = self.score_completions(environment, problems, [""] * len(problems))
        assert not any(s.solved for s in scores), "an empty completion was scored as solving the problem"

    @pytest.mark.filterwarnings("ignore")
    @pytest.mark.parametrize("kind", sorted(garbage_completions()))
    def test_garbage_never_raises(self, environment: Environment, train: list[Problem], kind: str) -> None:
        text = garbage_completions()[kind]
        problems = self._sample(train)[:4]
        self.score_completions(environment, problems, [text] * len(problems))

    @pytest.mark.filterwarnings("ignore")
    def test_score_finishes_within_its_time_limit(self, environment: Environment, train: list[Problem]) -> None:
        """One batch of every kind of garbage returns within `score_time_limit_s` (run in a thread so that a grader
        that hangs fails this test instead of hanging the suite)."""
        texts = list(garbage_completions().values())
        problems = [train[i % len(train)] for i in range(len(texts))]
        outcome: dict[str, object] = {}

        def work() -> None:
            try:
                outcome["scores"] = environment.score(problems, texts)
            except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(self.score_time_limit_s)
        assert not thread.is_alive(), f"score() of {len(texts)} adversarial completions took over {self.score_time_limit_s} s"
        assert "error" not in outcome, f"score() raised {outcome.get('error')!r}"
        check_scores(outcome["scores"], len(texts))

    # ------------------------------------------------------------------------------------ the embedded model's needs

    def test_reference_solutions_are_solved(self, environment: Environment, train: list[Problem]) -> None:
        """`metadata['solution']` (what `model.path=builtin:tiny` warms up on) must score as solved."""
        with_solution = [p for p in train if "solution" in p.metadata][: self.max_problems]
        if not with_solution:
            pytest.skip("no problem carries metadata['solution'] (needed only to train the embedded builtin:tiny model)")
        assert all(isinstance(p.metadata["solution"], str) for p in with_solution)
        scores = self.score_completions(environment, with_solution, [p.metadata["solution"] for p in with_solution])
        unsolved = [p.id for p, s in zip(with_solution, scores, strict=True) if not s.solved]
        assert not unsolved, f"reference solutions not scored as solved: {unsolved[:5]}"

    def test_distractors_are_wrong(self, environment: Environment, train: list[Problem]) -> None:
        """`metadata['distractors']` (the warm-up's wrong answers of the right form) do not solve (completions here;
        dialogues of a multi-turn environment in test_dialogue_distractors_do_not_solve)."""
        with_distractors = [p for p in train if "distractors" in p.metadata][: self.max_problems]
        if not with_distractors:
            pytest.skip("no problem carries metadata['distractors'] (optional: the embedded model's noisy warm-up)")
        every = [d for p in with_distractors for d in p.metadata["distractors"]]
        assert every and all(isinstance(d, str | list) for d in every), (
            "distractors must be a non-empty list of str (completions) or of message lists (dialogues)")
        pairs = [(p, d) for p in with_distractors for d in p.metadata["distractors"][:2] if isinstance(d, str)]
        if not pairs:
            pytest.skip("the distractors are dialogues: test_dialogue_distractors_do_not_solve checks them")
        scores = self.score_completions(environment, [p for p, _ in pairs], [d for _, d in pairs])
        solved = [p.id for (p, _), s in zip(pairs, scores, strict=True) if s.solved]
        assert not solved, f"distractors scored as solved: {solved[:5]}"


def _good_answer(problem: Problem) -> str:
    """The best guess at a rewarded completion: the reference solution when there is one, else the answer."""
    solution = problem.metadata.get("solution")
    return solution if isinstance(solution, str) else problem.answer
