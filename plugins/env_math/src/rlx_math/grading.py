"""Grades one completion against one gold answer with math-verify: answer extraction, normalisation, verification.

`grade` runs inside verifier worker processes (see `rlx_math.pool`) and never raises on model output.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rlx.interfaces import ScoreStatus

THINK_END = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")

# The last box is extracted by us, so math-verify sees a single box and its priority does not matter;
# without a box the default priorities apply ("final answer is ..." before a bare trailing expression).
_BOXED_TARGETS = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_FALLBACK_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())

# "1\,000", "1{,}000", "1 000": math-verify reads the thin-space forms as a product (1*0), a human as 1000.
_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:\\,|\\;|\\!|\\ |~|\{,\}|,| )\d{3})+(?:\.\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_THOUSANDS_SEPARATOR = re.compile(r"\\,|\\;|\\!|\\ |~|\{,\}|,| ")


class GradingTimeout(BaseException):
    """Raised by our interval timer. A BaseException so math-verify's `except Exception` cannot swallow it."""


class _DropTimeoutDisabledWarning(logging.Filter):
    # We pass timeout=None to math-verify on purpose (one timer of ours covers parse + verify, see `grade`);
    # math-verify warns about that once per process, which would only be noise in every worker.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@dataclass(frozen=True)
class GradeOptions:
    """How `grade` reads a completion; picklable, sent once to each worker."""

    timeout_s: float = 10.0
    require_think_close: bool = False
    fallback_tail_chars: int = 4000


def answer_region(completion: str, require_think_close: bool = False) -> str | None:
    """The part of `completion` that holds the final answer: the text after the last `</think>`.

    Without `</think>` the whole text (models that do not think), or None if `require_think_close`.
    """
    cut = completion.rfind(THINK_END)
    if cut >= 0:
        return completion[cut + len(THINK_END) :]
    return None if require_think_close else completion


def _braced(text: str, open_at: int, limit: int) -> int | None:
    """Index just past the `}` matching the `{` at `open_at`, looking before `limit`; None if unclosed.

    Escaped `\\{ \\}` do not count.
    """
    depth = 0
    i = open_at
    while i < limit:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, e.g. the brace of \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


_BARE_BOX_ARGUMENT = re.compile(r" +([^\s$]+)")


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`), or None if there is none.

    A box left unclosed (a truncated completion) is ignored and the one before it is used. Linear time:
    a box before an unclosed one must close before it (else the later box would be inside it and closed),
    so each earlier box is only scanned up to the later one's start.
    """
    limit = len(text)  # scan braces before this: the start of the last unclosed box
    found = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}  # each command's last place not yet tried
    while True:
        cmd = max(found, key=found.__getitem__)
        start = found[cmd]
        if start < 0:
            return None
        found[cmd] = text.rfind(cmd, 0, start)  # only the command just taken is searched again: linear overall
        i = start + len(cmd)
        if i < len(text) and text[i] == "{":
            close = _braced(text, i, limit)
            if close is not None:
                return text[i + 1 : close - 1]
            limit = start
        elif i < len(text) and text[i] == " ":
            # `\boxed 5`: TeX takes the next token; we take the next run of non-space characters
            match = _BARE_BOX_ARGUMENT.match(text, i)
            if match:
                return match.group(1).rstrip(".,;")
        # unclosed, or not a box command (e.g. \boxedanswer): look further left


def answer_key(completion: str, options: GradeOptions) -> str:
    """A short completion that `grade` scores exactly like `completion`: only the part holding the answer.

    Cheap (linear string scans, no regex backtracking, no sympy), so the parent process can use it to grade
    each distinct answer once and to send kilobytes instead of megabytes to the verifier processes.
    """
    region = answer_region(completion, options.require_think_close)
    if region is None or not region.strip():
        return ""
    boxed = last_boxed(region)
    # THINK_END first: the key must pass `require_think_close` exactly as the original did
    if boxed is not None:
        return f"{THINK_END}\\boxed{{{boxed}}}"
    return THINK_END + region[-options.fallback_tail_chars :]


def normalise_boxed(content: str) -> str:
    """Fix what math-verify reads differently from a human grader before it parses the box content."""
    content = content.strip()
    if _THOUSANDS.fullmatch(content):
        content = _THOUSANDS_SEPARATOR.sub("", content)
    return content


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """The gold answer parsed by math-verify ('' and unparseable answers give ()).

    Gold answers are bare expressions ("\\frac{1}{2}", "(1,2]") or LaTeX with their own `$`/`\\boxed`.
    Cached: a GRPO batch grades several completions against each gold answer.
    """
    gold = gold.strip()
    if not gold:
        return ()
    text = gold if ("\\boxed" in gold or _UNESCAPED_DOLLAR.search(gold)) else f"\\boxed{{{gold}}}"
    parsed = tuple(parse(text, extraction_config=_BOXED_TARGETS, parsing_timeout=None, raise_on_error=True))
    if not parsed:  # logged once per gold answer and process (cached): a data problem, not the model's
        logging.getLogger(__name__).warning(
            "rlx-math: cannot parse the gold answer %r; its samples score 'error'", gold
        )
    return parsed


def _canonical_integer(text: str) -> str | None:
    """Canonical form of a plain integer ("-007" -> "-7"), else None. Strings, not int(): no digit limit."""
    if not _INTEGER.fullmatch(text):
        return None
    sign = "-" if text[0] == "-" else ""
    digits = text.lstrip("+-").lstrip("0") or "0"
    return ("" if digits == "0" else sign) + digits


def _grade_untimed(gold: str, completion: str, options: GradeOptions) -> ScoreStatus:
    region = answer_region(completion, options.require_think_close)
    if region is None or not region.strip():
        return "no_answer"
    if not gold.strip():
        return "error"  # the data is broken, not the model: counted and reported as an error
    boxed = last_boxed(region)
    if boxed is not None:
        content = normalise_boxed(boxed)
        if not content:
            return "no_answer"
        gold_int, pred_int = _canonical_integer(gold.strip()), _canonical_integer(content)
        if gold_int is not None and pred_int is not None:
            # both plain integers (AIME, the toy task): exact, and no sympy on the hot path
            return "correct" if gold_int == pred_int else "wrong"
        text, targets = f"\\boxed{{{content}}}", _BOXED_TARGETS
    else:
        # Without a box, only the tail is searched: the answer is at the end, and math-verify's regexes over
        # a whole long chain of thought cost time and find intermediate results.
        text, targets = region[-options.fallback_tail_chars :], _FALLBACK_TARGETS
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return "error"
    predicted = parse(text, extraction_config=targets, parsing_timeout=None, raise_on_error=True)
    if not predicted:
        return "no_answer"
    # allow_set_relation_comp: a human accepts "1 < x < 2" for the interval (1, 2).
    ok = verify(list(gold_parsed), predicted, timeout_seconds=None, allow_set_relation_comp=True)
    return "correct" if ok else "wrong"


def _on_alarm(signum: int, frame: Any) -> None:
    raise GradingTimeout()


def grade(gold: str, completion: str, options: GradeOptions) -> ScoreStatus:
    """Grade one completion. Returns a status; never raises (except for interpreter shutdown signals).

    The time limit is an interval timer (SIGALRM) around extraction + verification, so it only works in
    a main thread; elsewhere grading runs untimed. The pool's parent process adds a hard limit on top
    (it kills the worker), which also covers C code that a signal cannot interrupt.
    """
    timed = options.timeout_s > 0 and threading.current_thread() is threading.main_thread()
    previous = None
    try:
        if timed:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, options.timeout_s)
        return _grade_untimed(gold, completion, options)
    except GradingTimeout:
        return "timeout"
    except RecursionError:
        return "error"  # deeply nested LaTeX overflows the parser's recursion
    except Exception:  # noqa: BLE001 - a parser crash on model output is a counted error, never a crash
        logging.getLogger(__name__).debug("grading failed", exc_info=True)
        return "error"
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


_WARM_UP_CASES = (
    ("\\frac{1}{2}", "so \\boxed{0.5}"),
    ("(1,2)", "\\boxed{1<x<2}"),  # relations and intervals: sympy's inequality solver
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("30^\\circ", "the answer is $30$"),  # the no-box fallback path
)


def warm_up() -> None:
    """Grade a few kinds of answers so sympy/antlr's lazy imports happen now, not inside a time limit."""
    for gold, completion in _WARM_UP_CASES:
        grade(gold, completion, GradeOptions(timeout_s=0))
