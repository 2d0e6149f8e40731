"""The `math` environment with tools (`env.tools: [python]`) as episodes: the model writes a ```python block, the
episode answers with what it printed (an ```output block), and so on, until a turn without a tool call, which is
graded as a single-turn completion is (`MathEnvironment.score`).

`build_math_environment` is the registered factory: `MathToolEnvironment` when tools are on, else the plain
single-turn `MathEnvironment`.
"""

from __future__ import annotations

from rlx.interfaces import Message, Observation, Problem, Score, Split, Turn
from rlx.tools.code_blocks import format_observation
from rlx.tools.python_sandbox import SandboxResult
from rlx_math.data import PromptTemplate
from rlx_math.env import MathEnvironment
from rlx_math.plugin import MathEnvConfig
from rlx_math.tool_step import FinalAnswer, tool_step


def tool_message(text: str) -> Message:
    """How a tool's output reaches the model: a user turn (every chat template renders one)."""
    return {"role": "user", "content": text}


class MathToolEpisode:
    """One problem solved with the Python tool: implements `rlx.interfaces.Episode`."""

    def __init__(self, env: MathEnvironment, problem: Problem) -> None:
        self.env = env
        self.problem = problem
        self.tool_calls = 0

    def step(self, turn: Turn) -> Observation | Score:
        outcome = tool_step(turn.text, self.env.config, self.tool_calls)  # runs the sandbox (bounded by its limits)
        if isinstance(outcome, FinalAnswer):
            return self.env.score([self.problem], [outcome.text])[0]
        self.tool_calls += 1
        return Observation((tool_message(outcome.text),))


class MathToolEnvironment(MathEnvironment):
    """`MathEnvironment` with episodes (`start_episode`). Toy problems also carry a tool-using demonstration (compute
    with Python, read the output, answer), so the embedded tiny model's warm-up shows it the format of a tool call."""

    def start_episode(self, problem: Problem) -> MathToolEpisode:
        return MathToolEpisode(self, problem)

    def _toy(self, split: Split, template: PromptTemplate) -> list[Problem]:
        problems = super()._toy(split, template)
        for p in problems:
            p.metadata["demonstration"] = toy_tool_dialogue(p.metadata["expression"], p.answer, self.config)
        return problems


def toy_tool_dialogue(expression: str, answer: str, config: MathEnvConfig) -> list[Message]:
    """A tool-using solution of a toy problem, exactly as an episode would run it: print the expression, read the
    sandbox's output block (as `format_observation` writes it), answer in a box."""
    printed = SandboxResult("ok", f"{answer}\n", "", 0, None, 0.0, len(answer) + 1)
    return [
        {"role": "assistant", "content": f"```python\nprint({expression})\n```"},
        tool_message(format_observation(printed, config.python_tool.max_output_chars)),
        {"role": "assistant", "content": f"\\boxed{{{answer}}}"},
    ]


def build_math_environment(config: MathEnvConfig, *, seed: int) -> MathEnvironment:
    """The `math` environment's factory: episodes with tools when `config.tools` names any, else single-turn."""
    return (MathToolEnvironment if config.tools else MathEnvironment)(config, seed=seed)
