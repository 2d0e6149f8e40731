"""Grades one completion against one gold answer with math-verify: answer extraction, normalisation, verification.

`grade` runs inside verifier worker processes (see `rlx_math.pool`) and never raises on model output.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from latex2sympy2_extended.math_normalization import normalize_latex
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.grader import should_treat_as_complex

from rlx.interfaces import ScoreStatus
from rlx_math import fastpath
from rlx_math.normal_form import (
    NormalAnswer,
    canonical_text,
    has_control_characters,
    is_repetition,
    normalise,
    normalise_gold,
    strip_math_delimiters,
    units_conflict,
)

THINK_END = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")

# The last box is extracted by us, so math-verify sees a single box and its priority does not matter;
# without a box the default priorities apply ("final answer is ..." before a bare trailing expression).
_BOXED_TARGETS = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_FALLBACK_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())

_INTEGER = re.compile(r"[-+]?\d+")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")

# Verdict paths that decided without sympy (see `Verdict.path`).
FAST_PATHS: frozenset[str] = frozenset(
    {"extract", "control", "units", "repetition", "string", "integer", "arithmetic", "size_limit"}
)


@dataclass(frozen=True)
class Verdict:
    """A status, and the step that decided it.

    path: "extract" (nothing to grade, or a broken gold answer), "control" (control bytes in the box),
    "units" (different units), "repetition" (one piece repeated: "5 5 5"), "string" (same normal form), "integer" (two plain integers), "arithmetic"
    (exact rationals / interval bounds, `rlx_math.fastpath`), "size_limit" (too large or deep for sympy, judged
    wrong), "sympy" (math-verify), "timeout" (the time limit), "killed"/"crashed" (the pool killed the
    worker or it died), "custom" (a custom grade function that returns only a status).
    """

    status: ScoreStatus
    path: str

    @property
    def fast(self) -> bool:
        return self.path in FAST_PATHS


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
    fast_paths: bool = True  # False: every boxed answer goes through math-verify (for comparison and tests)
    max_sympy_chars: int = 1000  # an undecided answer longer than this (and 8x the gold) is judged wrong
    max_sympy_depth: int = 40  # ... or nested deeper than this


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
    """The box content as a human grader reads it (units, punctuation, repeating decimals...), as LaTeX."""
    return normalise(content).value


def gold_content(gold: str) -> str:
    """The gold answer without its own `\\boxed{}` or `$...$` wrapping."""
    gold = gold.strip()
    if "\\boxed" in gold or "\\fbox" in gold:
        boxed = last_boxed(gold)
        if boxed is not None:
            return boxed.strip()
    return strip_math_delimiters(gold)


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """A gold answer (already `gold_content` and normalised) parsed by math-verify; '' and unparseable give ().

    Cached: a GRPO batch grades several completions against each gold answer.
    """
    gold = gold.strip()
    if not gold:
        return ()
    text = gold if _UNESCAPED_DOLLAR.search(gold) else f"\\boxed{{{gold}}}"
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


def _candidates(gold: NormalAnswer, predicted: NormalAnswer) -> list[tuple[str, str]]:
    """(gold, predicted) LaTeX pairs, any of which equal means correct: 12.5% for 12.5, and 50% for 0.5."""
    pairs = [(gold.value, predicted.value)]
    if predicted.percent and not gold.percent:
        pairs.append((gold.value, f"\\frac{{{predicted.value}}}{{100}}"))
    elif gold.percent and not predicted.percent:
        pairs.append((f"\\frac{{{gold.value}}}{{100}}", predicted.value))
    return pairs


# math-verify's normalisation without its malformed-operator fixes (regexes quadratic in the length): the
# fast parser reads \frac12 and \sqrt2 the same way and declines the other malformed forms.
_MV_NORMALISATION = replace(LatexExtractionConfig().normalization_config, boxed="last", malformed_operators=False)


def _as_math_verify_reads(value: str) -> str:
    """The string math-verify's parser receives for `\\boxed{value}` (its own normalisation)."""
    return normalize_latex(f"\\boxed{{{value}}}", config=_MV_NORMALISATION)


def _fast_parse(value: str) -> fastpath.Parsed | None:
    text = _as_math_verify_reads(value)
    if should_treat_as_complex(text):
        return None  # i is the imaginary unit there, a symbol here
    try:
        return fastpath.parse(text)
    except fastpath.Undecided:
        return None


_fast_parse_gold = lru_cache(maxsize=4096)(_fast_parse)


# A gold answer whose every number is below 2^(4 * length): no powers, factorials, sums, long digit runs.
_SMALL_GOLD = re.compile(r"(?:(?!\\(?:binom|dbinom|sum|prod|int|lim|exp))[^^!]){1,300}")
_LONG_DIGITS = re.compile(r"\d{30}")


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


def _fast_verdict(pairs: list[tuple[str, str]], options: GradeOptions) -> Verdict | None:
    """A verdict without sympy when one is certain (or the answer is too large for sympy), else None."""
    undecided = False
    decided_by = "arithmetic"
    for gold, predicted in pairs:
        if canonical_text(gold) == canonical_text(predicted):
            return Verdict("correct", "string")
        gold_int, pred_int = _canonical_integer(gold), _canonical_integer(predicted)
        if gold_int is not None and pred_int is not None:
            if gold_int == pred_int:
                return Verdict("correct", "integer")
            decided_by = "integer"
            continue
        gold_parsed = _fast_parse_gold(gold)
        pred_parsed = _fast_parse(predicted)
        same = None
        if pred_parsed is not None and gold_parsed is not None:
            same = fastpath.compare(gold_parsed, pred_parsed)
        elif pred_parsed is not None and _SMALL_GOLD.fullmatch(gold) and not _LONG_DIGITS.search(gold):
            # a set, interval or tuple of plain numbers cannot contain a number larger than 2^(4 * its length)
            same = False if fastpath.exceeds(pred_parsed, 4.0 * len(gold) + 64) else None
        if same is True:
            return Verdict("correct", "arithmetic")
        if same is None:
            undecided = True
    if not undecided:
        return Verdict("wrong", decided_by)
    predicted = pairs[0][1]
    too_long = len(predicted) > max(options.max_sympy_chars, 8 * len(pairs[0][0]))
    if too_long or _nesting_depth(predicted) > options.max_sympy_depth:
        return Verdict("wrong", "size_limit")
    return None


def _grade_untimed(gold: str, completion: str, options: GradeOptions) -> Verdict:
    region = answer_region(completion, options.require_think_close)
    if region is None or not region.strip():
        return Verdict("no_answer", "extract")
    if not gold.strip():
        return Verdict("error", "extract")  # the data is broken, not the model: counted and reported as an error
    boxed = last_boxed(region)
    if boxed is None:
        # Without a box, only the tail is searched: the answer is at the end, and math-verify's regexes over
        # a whole long chain of thought cost time and find intermediate results.
        gold_parsed = parse_gold(normalise_gold(gold_content(gold)).value)
        if not gold_parsed:
            return Verdict("error", "extract")
        tail = region[-options.fallback_tail_chars :]
        predicted = parse(tail, extraction_config=_FALLBACK_TARGETS, parsing_timeout=None, raise_on_error=True)
        if not predicted:
            return Verdict("no_answer", "sympy")
        ok = verify(list(gold_parsed), predicted, timeout_seconds=None, allow_set_relation_comp=True)
        return Verdict("correct" if ok else "wrong", "sympy")
    if has_control_characters(boxed):
        return Verdict("wrong", "control")  # no answer a human accepts has control bytes in it
    predicted_answer = normalise(boxed)
    if not predicted_answer.value:
        return Verdict("no_answer", "extract")
    gold_answer = normalise_gold(gold_content(gold))
    if not gold_answer.value:
        return Verdict("error", "extract")
    if units_conflict(gold_answer, predicted_answer):
        return Verdict("wrong", "units")
    if is_repetition(predicted_answer.value) and not is_repetition(gold_answer.value):
        return Verdict("wrong", "repetition")  # "5 5 5": math-verify would read a sum or a set {5}
    pairs = _candidates(gold_answer, predicted_answer)
    if options.fast_paths:
        verdict = _fast_verdict(pairs, options)
        if verdict is not None:
            return verdict
    parsed_any = False
    for gold_value, predicted_value in pairs:
        gold_parsed = parse_gold(gold_value)
        if not gold_parsed:
            return Verdict("error", "extract")
        predicted = parse(
            f"\\boxed{{{predicted_value}}}", extraction_config=_BOXED_TARGETS, parsing_timeout=None, raise_on_error=True
        )
        if not predicted:
            continue
        parsed_any = True
        # allow_set_relation_comp: a human accepts "1 < x < 2" for the interval (1, 2).
        if verify(list(gold_parsed), predicted, timeout_seconds=None, allow_set_relation_comp=True):
            return Verdict("correct", "sympy")
    return Verdict("wrong" if parsed_any else "no_answer", "sympy")


def _on_alarm(signum: int, frame: Any) -> None:
    raise GradingTimeout()


def grade_verdict(gold: str, completion: str, options: GradeOptions) -> Verdict:
    """Grade one completion: a status and the step that decided it. Never raises (except interpreter shutdown).

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
        return Verdict("timeout", "timeout")
    except RecursionError:
        return Verdict("error", "sympy")  # deeply nested LaTeX overflows the parser's recursion
    except Exception:  # noqa: BLE001 - a parser crash on model output is a counted error, never a crash
        logging.getLogger(__name__).debug("grading failed", exc_info=True)
        return Verdict("error", "sympy")
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def grade(gold: str, completion: str, options: GradeOptions) -> ScoreStatus:
    """The status of `grade_verdict`."""
    return grade_verdict(gold, completion, options).status


_WARM_UP_CASES = (
    ("\\frac{1}{2}", "so \\boxed{0.5}"),
    ("(1,2)", "\\boxed{1<x<2}"),  # relations and intervals: sympy's inequality solver
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("30^\\circ", "the answer is $30$"),  # the no-box fallback path
)
# The fast path only: these would keep sympy busy for minutes.
_WARM_UP_FAST_CASES = (("2\\sqrt{5}", "\\boxed{9^{9^{9}} - \\frac{1}{3}}"),)  # intervals and bounds (mpmath)


def warm_up() -> None:
    """Grade a few kinds of answers so sympy/antlr's lazy imports happen now, not inside a time limit."""
    for gold, completion in _WARM_UP_CASES:
        for fast_paths in (True, False):
            grade(gold, completion, GradeOptions(timeout_s=0, fast_paths=fast_paths))
    for gold, completion in _WARM_UP_FAST_CASES:
        grade(gold, completion, GradeOptions(timeout_s=0))
