"""The math environment's tool step: a model turn becomes a final answer or a Python tool observation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlx_math.plugin import MathEnvConfig
from rlx_math.tool_step import FinalAnswer, ToolObservation, tool_step

PYTHON = MathEnvConfig(tools=["python"], max_tool_calls=2, python_tool={"timeout_s": 2.0, "max_output_chars": 200})
CODE_TURN = "Let me compute it.\n```python\nprint(sum(k * k for k in range(1, 11)))\n```"


def test_tools_are_off_by_default() -> None:
    config = MathEnvConfig()
    assert config.tools == [] and config.max_tool_calls == 4
    assert tool_step(CODE_TURN, config, 0) == FinalAnswer(CODE_TURN, "no_tools")


def test_code_block_runs_and_returns_an_observation() -> None:
    step = tool_step(CODE_TURN, PYTHON, 0)
    assert isinstance(step, ToolObservation)
    assert step.code == "print(sum(k * k for k in range(1, 11)))"
    assert step.result.status == "ok" and step.text == "```output\n385\n```"


def test_unclosed_block_at_the_end_of_the_turn_runs() -> None:
    step = tool_step("```python\nprint(2 ** 10)", PYTHON, 1)
    assert isinstance(step, ToolObservation) and step.text == "```output\n1024\n```"


def test_turns_without_a_tool_call_are_final_answers() -> None:
    assert tool_step("So the answer is \\boxed{385}.", PYTHON, 0) == FinalAnswer(
        "So the answer is \\boxed{385}.", "no_code"
    )
    answered = CODE_TURN + "\n```output\n385\n```\nThus \\boxed{385}."
    assert tool_step(answered, PYTHON, 0) == FinalAnswer(answered, "answered_after_code")
    assert tool_step("```python\n\n```", PYTHON, 0).reason == "no_code"  # type: ignore[union-attr]


def test_tool_budget() -> None:
    assert tool_step(CODE_TURN, PYTHON, 2) == FinalAnswer(CODE_TURN, "tool_budget_spent")
    assert isinstance(tool_step(CODE_TURN, PYTHON, 1), ToolObservation)


def test_runaway_code_ends_within_its_limit_with_a_status() -> None:
    step = tool_step("```python\nimport time\ntime.sleep(600)\n```", PYTHON, 0)
    assert isinstance(step, ToolObservation) and step.result.status == "timeout"
    assert step.text.startswith("```output\n[timed out after 2.")
    error = tool_step("```python\nraise ValueError('bad input')\n```", PYTHON, 0)
    assert isinstance(error, ToolObservation) and error.text.endswith("ValueError: bad input\n```")


def test_config_rejects_unknown_tools_and_limits() -> None:
    with pytest.raises(ValidationError, match="python"):
        MathEnvConfig(tools=["bash"])
    with pytest.raises(ValidationError, match="extra"):
        MathEnvConfig(python_tool={"timeout": 3})
    with pytest.raises(ValidationError):
        MathEnvConfig(max_tool_calls=-1)
