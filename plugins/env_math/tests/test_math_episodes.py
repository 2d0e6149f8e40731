"""The `math` environment with the Python tool as episodes: the factory picks episodes when `tools` is set, a
tool call is answered with the sandbox's real output, the final turn is graded as today, the toy warm-up
demonstration is exactly what an episode produces, and the environment passes the conformance suite with its
episode tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlx.interfaces import EpisodeEnvironment, Observation, Score, Turn
from rlx.testing import EnvironmentConformance
from rlx_math.env import MathEnvironment
from rlx_math.episodes import MathToolEnvironment, build_math_environment
from rlx_math.plugin import MathEnvConfig

TOOLS = {"tools": ["python"], "num_workers": 1, "timeout_s": 2.0, "python_tool": {"timeout_s": 5.0}}


@pytest.fixture(scope="module")
def env():
    environment = build_math_environment(MathEnvConfig.model_validate({**TOOLS, "toy": {"train_size": 16}}), seed=0)
    yield environment
    environment.close()


def test_the_factory_gives_episodes_only_with_tools():
    plain = build_math_environment(MathEnvConfig(num_workers=0), seed=0)
    assert type(plain) is MathEnvironment and not isinstance(plain, EpisodeEnvironment)
    plain.close()


def test_a_tool_call_gets_the_sandbox_output_and_the_answer_is_graded(env):
    assert isinstance(env, MathToolEnvironment) and isinstance(env, EpisodeEnvironment)
    problem = env.problems("train")[0]
    episode = env.start_episode(problem)
    observation = episode.step(Turn(f"Let me compute.\n```python\nprint({problem.metadata['expression']})\n```", (),
                                    "stop", 0))
    assert observation == Observation(({"role": "user", "content": f"```output\n{problem.answer}\n```"},))
    assert episode.step(Turn(f"So \\boxed{{{problem.answer}}}.", (), "stop", 1)) == Score(1.0, "correct")
    wrong = env.start_episode(problem)
    assert wrong.step(Turn("\\boxed{-1000}", (), "stop", 0)).status == "wrong"  # no code: graded at once


def test_the_warm_up_demonstration_replays_as_an_episode(env):
    for problem in env.problems("train")[:4]:
        demo = problem.metadata["demonstration"]
        episode = env.start_episode(problem)
        observation = episode.step(Turn(demo[0]["content"], (), "stop", 0))
        assert observation.messages == (demo[1],)  # the demonstration's output block is the sandbox's, exactly
        assert episode.step(Turn(demo[2]["content"], (), "stop", 1)) == Score(1.0, "correct")


def test_a_runaway_tool_call_is_bounded_by_the_sandbox(env):
    problem = env.problems("train")[0]
    episode = env.start_episode(problem)
    observation = episode.step(Turn("```python\nwhile True:\n    pass\n```", (), "stop", 0))
    assert isinstance(observation, Observation) and "timed out" in observation.messages[0]["content"]


class TestMathToolConformance(EnvironmentConformance):
    # one verifier process and a 2 s grading limit, as for the single-turn suite
    score_time_limit_s = 60.0
    # a few problems: every garbage episode may run the sandbox (a process each) up to max_tool_calls times
    max_episode_problems = 4

    @pytest.fixture(scope="class")
    def make_environment(self):
        return lambda seed: build_math_environment(MathEnvConfig.model_validate(TOOLS), seed=seed)


@pytest.mark.slow
def test_math_with_the_python_tool_runs_end_to_end_on_the_tiny_model(tmp_path):
    """`rlx run --env math env.tools=[python]` on the embedded tiny model (warmed up on tool-using demonstrations):
    episodes run, the model calls the tool (some episodes have a second turn), validation runs episodes too."""
    from rich.console import Console

    from rlx.config import build_config
    from rlx.metrics import read_metrics
    from rlx.plan import resolve_plan
    from rlx.run import run

    cfg = build_config(None, [
        f"output_dir={tmp_path / 'run'}", "env.tools=[python]", "env.num_workers=1", "model.max_seq_len=128",
        "grpo.max_new_tokens=24", "grpo.prompts_per_step=8", "grpo.num_generations=4", "grpo.mini_batch_size=32",
        "steps=2", "validation.period=2", "validation.max_problems=8", "checkpoint.export_hf=false",
        "logging.progress=false", "logging.tensorboard=false",
    ], env="math")
    summary = run(resolve_plan(cfg), console=Console(quiet=True))
    rows = [m for m in read_metrics(Path(summary["metrics"])) if "reward/mean" in m]
    assert len(rows) == 2 and max(m["episode/turns_max"] for m in rows) >= 2
    assert all(0 < m["episode/observation_token_frac"] < 1 for m in rows)
    assert "val/accuracy" in rows[-1]
