"""The `math` component as rlx sees it: registration, cheap import, the Environment contract, warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from rlx.interfaces import Environment, Problem
from rlx_math.env import AllGradingFailedWarning, MathEnvironment
from rlx_math.plugin import MathEnvConfig


def _problem(answer: str) -> Problem:
    return Problem("p", ({"role": "user", "content": "q"},), answer)


def test_registered_through_the_entry_point() -> None:
    from rlx.plugins import catalog

    spec = catalog().get("environment", "math")
    assert spec.plugin.distribution == "rlx-math" and spec.config is MathEnvConfig
    factory = spec.load_factory()
    env = factory(spec.config.model_validate({"num_workers": 1}), seed=3)
    try:
        assert isinstance(env, Environment)
        assert env.score([_problem("8")], ["3+5=\\boxed{8}"])[0].status == "correct"
    finally:
        env.close()
    assert env.pool.worker_pids() == []


def test_plugin_module_is_cheap_to_import() -> None:
    code = (
        "import sys, rlx_math.plugin; "
        "print(sorted(m for m in ('datasets', 'math_verify', 'torch', 'sympy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_all_failed_batch_warns_loudly_but_wrong_answers_do_not() -> None:
    env = MathEnvironment(MathEnvConfig(num_workers=0), seed=0)
    problems = [_problem("1"), _problem("2"), _problem("3")]
    with pytest.warns(AllGradingFailedWarning, match=r"ALL 3 completions.*no_answer=3"):
        scores = env.score(problems, ["", "no idea", "<think>hmm"])
    assert [s.reward for s in scores] == [0.0, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.score(problems, ["\\boxed{7}", "", "nothing"])  # one graded (wrong) answer: no warning
        env.score(problems[:1], [""])  # a single sample is not a batch-wide failure
    assert env.stats()["status/no_answer"] == 6 and env.stats()["status/wrong"] == 1


def test_require_think_close() -> None:
    strict = MathEnvironment(MathEnvConfig(num_workers=0, require_think_close=True), seed=0)
    lenient = MathEnvironment(MathEnvConfig(num_workers=0), seed=0)
    completions = ["I think \\boxed{5}", "<think>x</think>\\boxed{5}"]
    problems = [_problem("5")] * 2
    assert [s.status for s in strict.score(problems, completions)] == ["no_answer", "correct"]
    assert [s.status for s in lenient.score(problems, completions)] == ["correct", "correct"]


def test_score_rejects_mismatched_lengths_and_handles_duplicates() -> None:
    env = MathEnvironment(MathEnvConfig(num_workers=1), seed=0)
    try:
        with pytest.raises(ValueError, match="2 problems but 1 completions"):
            env.score([_problem("1"), _problem("2")], ["1"])
        scores = env.score([_problem("4")] * 5 + [_problem("5")], ["\\boxed{4}"] * 5 + ["\\boxed{4}"])
        assert [s.reward for s in scores] == [1.0] * 5 + [0.0]
        assert env.score([], []) == []
    finally:
        env.close()


def test_bad_gold_is_an_error_not_a_crash() -> None:
    env = MathEnvironment(MathEnvConfig(num_workers=0), seed=0)
    assert env.score([_problem("   ")], ["\\boxed{1}"])[0].status == "error"
