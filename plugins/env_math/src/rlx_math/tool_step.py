"""One tool step of a math episode, as a pure function of the model's turn: a final answer or a tool observation.

The episode loop (multi-turn) calls `tool_step` after each model turn: a `FinalAnswer` is graded with
`MathEnvironment.score`; a `ToolObservation` is appended to the conversation and the model goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlx.tools.code_blocks import format_observation, last_python_block
from rlx.tools.python_sandbox import SandboxResult, run_python
from rlx_math.plugin import MathEnvConfig


@dataclass(frozen=True)
class FinalAnswer:
    """The turn is the model's answer: grade `text`."""

    text: str
    reason: str  # "no_code" | "answered_after_code" | "no_tools" | "tool_budget_spent"


@dataclass(frozen=True)
class ToolObservation:
    """The turn asked the Python tool to run `code`; `text` is what the model reads next (an output fence)."""

    code: str
    result: SandboxResult
    text: str


def tool_step(turn: str, config: MathEnvConfig, tool_calls_so_far: int) -> FinalAnswer | ToolObservation:
    """What follows `turn`: run its last ```python block (a tool call) or grade it (a final answer).

    A turn is a tool call when the python tool is enabled, calls are left (`config.max_tool_calls`), and it has a
    ```python block with no `\\boxed` answer after it. The block may be unclosed at the end of the turn
    (generation stopped at the closing fence). Runs the sandbox (seconds at most: `config.python_tool`);
    otherwise pure: no state is kept between calls.
    """
    if "python" not in config.tools:
        return FinalAnswer(turn, "no_tools")
    block = last_python_block(turn)
    if block is None or not block.code.strip():
        return FinalAnswer(turn, "no_code")
    if "\\boxed" in turn[block.end :] or "\\fbox" in turn[block.end :]:
        return FinalAnswer(turn, "answered_after_code")
    if tool_calls_so_far >= config.max_tool_calls:
        return FinalAnswer(turn, "tool_budget_spent")
    result = run_python(block.code, config.python_tool)
    return ToolObservation(block.code, result, format_observation(result, config.python_tool.max_output_chars))
