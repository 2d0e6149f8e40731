"""Finds the Python code block in a model turn and turns a sandbox result into the observation the model reads.

ToRL/ReTool style: the model writes ```python ... ```; the environment answers with ```output ... ```.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlx.tools.python_sandbox import SandboxResult

_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)
_CLOSE_FENCE = re.compile(r"\n?[ \t]*```")


@dataclass(frozen=True)
class CodeBlock:
    """A fenced Python block: its code, where it starts and ends in the turn, and whether it was closed."""

    code: str
    start: int
    end: int
    closed: bool


def last_python_block(text: str, allow_unclosed: bool = True) -> CodeBlock | None:
    """The last ```python (or ```py) block of `text`, or None.

    A block still open at the end of the text counts when `allow_unclosed` (generation often stops at the
    closing fence, which engines strip as a stop string); its code runs to the end of the text.
    """
    opens = list(_OPEN_FENCE.finditer(text))
    for match in reversed(opens):
        close = _CLOSE_FENCE.search(text, match.end())
        if close is not None:
            return CodeBlock(text[match.end() : close.start()], match.start(), close.end(), True)
        if allow_unclosed and match is opens[-1]:
            return CodeBlock(text[match.end() :], match.start(), len(text), False)
    return None


def truncate_middle(text: str, max_chars: int) -> str:
    """`text` if short enough, else its start and its end around a marker saying how much was left out."""
    if len(text) <= max_chars:
        return text
    keep_head = max_chars * 2 // 3
    keep_tail = max(0, max_chars - keep_head)
    omitted = len(text) - keep_head - keep_tail
    return f"{text[:keep_head]}\n[... {omitted} characters omitted ...]\n{text[len(text) - keep_tail :]}"


def format_observation(result: SandboxResult, max_chars: int = 2000) -> str:
    """The tool's answer as the model sees it: stdout, then what went wrong (if anything), in an output fence.

    At most about `max_chars` characters of program output (its start and end); the traceback's last lines
    for an error; one bracketed line for a limit that stopped the program.
    """
    parts = []
    stdout = result.stdout.rstrip("\n")
    if stdout:
        parts.append(truncate_middle(stdout, max_chars))
    if result.status == "error":
        traceback_tail = result.stderr.strip() or f"exit code {result.exit_code}"
        parts.append(truncate_middle(traceback_tail, max(200, max_chars // 2))[-max(200, max_chars // 2) :])
    elif result.status == "timeout":
        parts.append(f"[timed out after {result.wall_s:.1f} s]")
    elif result.status == "killed":
        parts.append(f"[killed: {result.reason} limit]" if result.reason in ("memory", "cpu", "output") else "[killed]")
    if not parts:
        parts.append("[no output]")
    return "```output\n" + "\n".join(parts) + "\n```"
