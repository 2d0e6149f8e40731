"""Plugins that break their contract are caught at the core's boundary: one message naming the component, its
distribution and what the contract asks; through the CLI, exit code 2 and no traceback."""

from __future__ import annotations

import math
import types

import pytest
from pydantic import BaseModel, ConfigDict

import rlx
from rlx.contracts import CheckedEnvironment
from rlx.errors import ComponentError
from rlx.interfaces import Problem, Score
from rlx.registry import BuildContext, build_component

LABEL = "environment 'bad' (from rlx-bad)"
PROBLEMS = [Problem(f"p{i}", ({"role": "user", "content": f"{i}+1="},), str(i + 1)) for i in range(3)]


class _Env:
    def __init__(self, score=None, problems=None) -> None:
        self._score = score
        self._problems = problems

    def problems(self, split):
        return self._problems(split) if callable(self._problems) else list(PROBLEMS if self._problems is None else self._problems)

    def score(self, problems, completions):
        return self._score(problems, completions)

    def close(self) -> None:
        pass


def _checked(**kw) -> CheckedEnvironment:
    return CheckedEnvironment(_Env(**kw), LABEL)


def test_score_that_raises():
    def boom(problems, completions):
        raise KeyError("answer")

    with pytest.raises(ComponentError) as info:
        _checked(score=boom).score(PROBLEMS, ["a", "b", "c"])
    assert str(info.value) == (
        f"{LABEL}: score() raised KeyError: 'answer'. The Environment contract: score() never raises on model output; "
        "a completion it cannot grade gets a Score with status 'error'"
    )


def test_score_with_the_wrong_count():
    with pytest.raises(ComponentError) as info:
        _checked(score=lambda p, c: [Score(1.0, "correct")]).score(PROBLEMS, ["a", "b", "c"])
    assert str(info.value) == (
        f"{LABEL}: score() returned 1 scores for 3 completions; it must return exactly one Score per completion, "
        "in order"
    )


@pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf])
def test_non_finite_reward(reward):
    scores = [Score(0.0, "wrong"), Score(reward, "correct"), Score(1.0, "correct")]
    with pytest.raises(ComponentError) as info:
        _checked(score=lambda p, c: scores).score(PROBLEMS, ["a", "b", "c"])
    assert str(info.value).startswith(f"{LABEL}: score()[1] has reward {reward!r} (status 'correct'); rewards must be "
                                      "finite numbers")


def test_values_that_are_not_scores():
    with pytest.raises(ComponentError, match=r"score\(\)\[0\] is a float, not an rlx.Score"):
        _checked(score=lambda p, c: [1.0, 0.0, 1.0]).score(PROBLEMS, ["a", "b", "c"])
    with pytest.raises(ComponentError, match=r"score\(\) returned a dict; it must return a list of rlx.Score"):
        _checked(score=lambda p, c: {}).score(PROBLEMS, ["a", "b", "c"])
    with pytest.raises(ComponentError, match=r"score\(\)\[2\] is an int, not an rlx.Score"):
        _checked(score=lambda p, c: [Score(1.0, "correct"), Score(1.0, "correct"), 3]).score(PROBLEMS, ["a", "b", "c"])
    with pytest.raises(ComponentError, match=r"has reward True"):  # a bool is not a reward
        _checked(score=lambda p, c: [Score(True, "correct")] * 3).score(PROBLEMS, ["a", "b", "c"])


def test_good_scores_pass_through():
    scores = [Score(1, "correct"), Score(0.5, "partial", correct=False), Score(-1.0, "format")]
    assert _checked(score=lambda p, c: scores).score(PROBLEMS, ["a", "b", "c"]) == scores


def test_no_training_problems():
    with pytest.raises(ComponentError) as info:
        _checked(problems=lambda split: []).problems("train")
    assert str(info.value) == (
        f"{LABEL} has no training problems: problems('train') returned an empty list (check the environment's "
        "dataset options, e.g. env.train)"
    )
    assert _checked(problems=lambda split: PROBLEMS if split == "train" else []).problems("validation") == []


def test_problems_that_raise_or_are_not_problems():
    def missing(split):
        raise FileNotFoundError("data/train.jsonl")

    with pytest.raises(ComponentError, match=r"problems\('train'\) raised FileNotFoundError: data/train.jsonl"):
        _checked(problems=missing).problems("train")
    with pytest.raises(ComponentError, match=r"problems\('train'\)\[1\] is a str, not an rlx.Problem"):
        _checked(problems=[PROBLEMS[0], "what is 1+1?"]).problems("train")


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _raising_factory(config, **kwargs):
    raise RuntimeError("CUDA out of memory\nsecond line")


def test_factory_that_raises_names_component_and_plugin():
    with pytest.raises(ComponentError) as info:
        build_component("environment", f"{__name__}:_raising_factory", _Cfg(), BuildContext(seed=0), label=LABEL)
    assert str(info.value) == (
        f"{LABEL} could not be built: its factory '{__name__}:_raising_factory' raised RuntimeError: CUDA out of "
        "memory (set RLX_DEBUG=1 for the traceback)"
    )


# ------------------------------------------------------------------------------------------------ through the CLI


def _empty_env(config, *, seed):
    return _Env(problems=[])


def _plugin(factory: str) -> types.SimpleNamespace:
    def register_environments(registry) -> None:
        registry.add("bad", config=_Cfg, factory=factory)

    return types.SimpleNamespace(register_environments=rlx.hookimpl(register_environments))


def cli(capsys, *args: str) -> tuple[int, str]:
    """`rlx ARGS` in this process (so in-process plugins are seen): exit code and stderr, unwrapped."""
    from rlx.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("_empty_env", "environment 'bad' (from (in-process)) has no training problems: problems('train') returned an "
                       "empty list"),
        ("_raising_factory", "environment 'bad' (from (in-process)) could not be built: its factory "
                             "'tests.test_contracts:_raising_factory' raised RuntimeError: CUDA out of memory"),
    ],
)
def test_cli_reports_a_broken_environment_with_its_plugin(register_plugin, capsys, tmp_path, factory, expected):
    register_plugin(_plugin(f"tests.test_contracts:{factory}"), "bad-plugin")
    code, err = cli(capsys, "run", "--env", "bad", f"output_dir={tmp_path / 'run'}", "logging.progress=false")
    assert code == 2 and expected in err and "Traceback" not in err


def _nan_env(config, *, seed):
    return _Env(score=lambda problems, completions: [Score(math.nan, "correct")] * len(completions),
                problems=lambda split: PROBLEMS if split == "train" else [])


def test_cli_stops_a_run_whose_environment_returns_nan(register_plugin, capsys, tmp_path):
    """Today's behaviour was "final reward nan", exit 0: now the first step stops with the plugin's name."""
    from rlx.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    register_plugin(_plugin("tests.test_contracts:_nan_env"), "bad-plugin")
    code, err = cli(capsys, "run", "--env", "bad", f"model={model}", f"output_dir={tmp_path / 'run'}", "steps=2",
                    "grpo.prompts_per_step=2", "grpo.num_generations=2", "grpo.mini_batch_size=4",
                    "grpo.max_new_tokens=4", "validation.period=0", "logging.progress=false",
                    "logging.tensorboard=false")
    assert code == 2 and "Traceback" not in err
    assert "error: environment 'bad' (from (in-process)): score()[0] has reward nan (status 'correct'); rewards must " \
           "be finite numbers" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
