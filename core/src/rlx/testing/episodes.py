"""`EpisodeConformance`: the episode part of `EnvironmentConformance` (which includes it), run when the environment
is multi-turn (has `start_episode`) and skipped, saying so, when it is not. It drives episodes the way the core
does (`Turn`s of decoded text, from worker threads) and checks what the core relies on: each step answers with an
Observation of chat messages or a finite Score, never raises on whatever a model writes, returns promptly, keeps
episodes independent (concurrent episodes give what sequential ones give), and the embedded model's warm-up
dialogues mean what the warm-up assumes (`metadata['demonstration']` replayed solves its problem, dialogue
`metadata['distractors']` do not). Subclass `EnvironmentConformance`, not this.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlx.contracts import check_step_result
from rlx.errors import ComponentError
from rlx.interfaces import Environment, EpisodeEnvironment, Message, Observation, Problem, Score, Turn

#: turns a model may write, by name (each is sent as every turn of an episode)
GARBAGE_TURNS: dict[str, str] = {
    "empty": "",
    "whitespace": " \n\t ",
    "control-bytes": "".join(chr(i) for i in range(32)) + "\x7f",
    "huge": "the answer is " * 20_000,
    "unbalanced": "```python\nprint(" * 200,
    "markup": "<think></think></tool_call>\\boxed{" * 50,
}


def play(env: EpisodeEnvironment, problem: Problem, turns: Sequence[str], label: str = "environment") -> list[Observation | Score]:
    """Drive one episode with `turns` (stopping at its Score); every answer checked against the contract."""
    episode = env.start_episode(problem)
    answers: list[Observation | Score] = []
    for index, text in enumerate(turns):
        try:
            answer = check_step_result(episode.step(Turn(text, (), "stop", index)), label)
        except ComponentError as exc:
            pytest.fail(str(exc))
        answers.append(answer)
        if isinstance(answer, Score):
            break
    return answers


def assistant_turns(dialogue: Sequence[Message]) -> list[str]:
    return [m["content"] for m in dialogue if m["role"] == "assistant"]


class EpisodeConformance:
    """The episode tests (a mixin: the `environment` fixture comes from `EnvironmentConformance`).

    Class attributes a plugin may override (say why in a comment):
    """

    #: how many training problems the episode tests use.
    max_episode_problems: int = 16
    #: turns per garbage episode (an episode may go on as long as it likes; the core ends it at `rollout.max_turns`).
    max_turns: int = 4
    #: one step must return within this many seconds (the core's default `rollout.env_timeout_s` is 30).
    step_time_limit_s: float = 30.0

    @pytest.fixture(scope="class")
    def episode_problems(self, environment: Environment) -> list[Problem]:
        if not isinstance(environment, EpisodeEnvironment):
            pytest.skip("single-turn environment (no start_episode): the episode tests do not apply")
        problems = list(environment.problems("train"))[: self.max_episode_problems]
        assert problems, "problems('train') is empty"
        return problems

    @pytest.mark.parametrize("kind", sorted(GARBAGE_TURNS))
    def test_garbage_turns_get_a_valid_answer_promptly(self, environment: Environment, episode_problems: list[Problem],
                                                       kind: str) -> None:
        """Whatever the model writes, each step returns an Observation or a Score within `step_time_limit_s`."""
        problem, outcome = episode_problems[0], {}

        def work() -> None:
            try:
                outcome["answers"] = play(environment, problem, [GARBAGE_TURNS[kind]] * self.max_turns)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(self.step_time_limit_s * self.max_turns)
        assert not thread.is_alive(), f"an episode of {self.max_turns} {kind!r} turns took over its time limit"
        if "error" in outcome:
            raise AssertionError(f"start_episode/step raised on {kind!r} turns: {outcome['error']!r}")

    def test_concurrent_episodes_match_sequential_ones(self, environment: Environment,
                                                       episode_problems: list[Problem]) -> None:
        """Episodes are independent: many stepped at once from threads give what each gives alone."""
        scripts = [(p, self._script(p, i)) for i, p in enumerate(episode_problems)]
        alone = [play(environment, p, turns) for p, turns in scripts]  # type: ignore[arg-type]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda pt: play(environment, *pt), scripts))  # type: ignore[arg-type]
        assert together == alone

    def test_demonstrations_solve_their_problems(self, environment: Environment,
                                                 episode_problems: list[Problem]) -> None:
        """`metadata['demonstration']` (the embedded model's warm-up dialogue), replayed, ends with a solved Score."""
        demos = [p for p in episode_problems if "demonstration" in p.metadata]
        if not demos:
            pytest.skip("no problem carries metadata['demonstration'] (needed only for the embedded builtin:tiny model)")
        for p in demos:
            answers = play(environment, p, assistant_turns(p.metadata["demonstration"]))  # type: ignore[arg-type]
            assert isinstance(answers[-1], Score) and answers[-1].solved, f"{p.id}: demonstration ends {answers[-1]}"

    def test_dialogue_distractors_do_not_solve(self, environment: Environment, episode_problems: list[Problem]) -> None:
        """Dialogue `metadata['distractors']` (the noisy warm-up's wrong dialogues), replayed, do not solve."""
        pairs = [(p, d) for p in episode_problems for d in p.metadata.get("distractors", ())[:2] if isinstance(d, list)]
        if not pairs:
            pytest.skip("no problem carries dialogue distractors (optional: the embedded model's noisy warm-up)")
        for p, dialogue in pairs:
            answers = play(environment, p, assistant_turns(dialogue))  # type: ignore[arg-type]
            assert not (isinstance(answers[-1], Score) and answers[-1].solved), f"{p.id}: a distractor solved it"

    def _script(self, problem: Problem, index: int) -> list[str]:
        """Turns for the concurrency test: the demonstration when there is one, else a mix of answers and noise."""
        demo = problem.metadata.get("demonstration")
        if demo:
            return assistant_turns(demo)
        return [problem.answer if (index + t) % 3 == 0 else f"not {index}" for t in range(self.max_turns)]
