"""Tools an environment can offer a model during an episode: a sandboxed Python interpreter, code-block helpers."""

from rlx.tools.code_blocks import CodeBlock, format_observation, last_python_block, truncate_middle
from rlx.tools.python_sandbox import PythonToolConfig, SandboxResult, SandboxStatus, run_python

__all__ = [
    "CodeBlock",
    "PythonToolConfig",
    "SandboxResult",
    "SandboxStatus",
    "format_observation",
    "last_python_block",
    "run_python",
    "truncate_middle",
]
