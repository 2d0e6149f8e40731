"""Rewrites a final answer the way a careful human grader reads it, before math-verify parses it.

Units and currency next to the number, words in `\\text{}`, trailing punctuation, repeating decimals, unicode
symbols. Decimals become exact fractions, so 0.333333 is never 1/3 (math-verify compares floats to 6 places).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

# C0/C1 control characters other than tab/newline/return: no answer a human would accept contains them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_UNICODE = {
    "°": "^\\circ",
    "−": "-",
    "–": "-",
    "×": "\\times",
    "÷": "\\div",
    "·": "\\cdot",
    "π": "\\pi",
    "∞": "\\infty",
    "√": "\\sqrt ",
    "≤": "\\le ",
    "≥": "\\ge ",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\\degree\b|\^\s*\\circ\b")

# "1\,000", "1{,}000", "1 000": math-verify reads the thin-space forms as a product (1*0), a human as 1000.
_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:\\,|\\;|\\!|\\ |~|\{,\}|,| )\d{3})+(?:\.\d+)?")
_THOUSANDS_SEPARATOR = re.compile(r"\\,|\\;|\\!|\\ |~|\{,\}|,| ")

# Trailing sentence punctuation and spacing ("\boxed{5.}"); "!" stays, it is a factorial.
_TRAILING_CHARS = " \t\n\r.,;:?~"
_TRAILING_COMMANDS = ("\\,", "\\;", "\\:", "\\!", "\\ ", "\\quad", "\\qquad")
_ELLIPSES = ("...", "\\ldots", "\\cdots", "\\dots", "…")

_TEXT_COMMAND = re.compile(
    r"\\(?:text|textbf|textrm|textit|textnormal|textsf|mathrm|mathbf|mathit|mbox|operatorname)\s*\{"
)
_NUMBER_THEN_WORDS = re.compile(r"([-+]?\s*(?:\\\$\s*)?[\d.,]+)\s+([A-Za-z][A-Za-z\s.]*)")
_STARTS_WITH_NUMBER = re.compile(r"\s*[-+]?\s*(?:\\\$\s*)?(?:\d|\.\d)")

# A unit after the number: words in a text group (any words), or a bare unit word from the list below
# (bare letters are variables otherwise: "5x" is not five of unit x).
_BARE_UNITS = (
    "cm|mm|km|kg|mg|ml|mL|ft|feet|foot|inches|inch|meters|meter|metres|metre|miles|mile|yards|yard|hours|hour|hrs|hr|"
    "minutes|minute|mins|min|seconds|second|secs|sec|days|day|weeks|week|months|month|years|year|dollars|dollar|"
    "cents|cent|degrees|degree|units|unit|mph|kmh|liters|liter|litres|litre|grams|gram|pounds|pound|ounces|ounce|"
    "square|sq|cubic|radians|radian|rad"
)
_UNIT_TAIL = re.compile(
    r"(?:\s|\\[,;: ]|~)*"
    r"((?:(?:\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{(?:[A-Za-z\s.\\{}/]|\^\{?[23]\}?)*\}|(?<![A-Za-z\\])(?:"
    + _BARE_UNITS
    + r")\b)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?(?:\s|\\[,;: ]|~)*)+)$"
)
_UNIT_WINDOW = 120
# What may carry a degree sign: a number, a fraction or a root of numbers (not "\sin 30": the sign is inside)
_NUMBER_LIKE = re.compile(r"[-+]?(?:[\d.]+|\\[dt]?frac\{[\d.]+\}\{[\d.]+\}|[\d.]*\\sqrt\{?\d+\}?|\\pi|[\d.]*\\pi)")
_DOLLAR_PREFIX = re.compile(r"^\s*(-?)\s*\\?\$\s*")

_UNIT_ALIASES = {
    "centimeter": "cm",
    "centimetre": "cm",
    "millimeter": "mm",
    "millimetre": "mm",
    "kilometer": "km",
    "kilometre": "km",
    "meter": "m",
    "metre": "m",
    "foot": "ft",
    "feet": "ft",
    "inch": "in",
    "mile": "mi",
    "yard": "yd",
    "hour": "h",
    "hr": "h",
    "minute": "min",
    "second": "s",
    "sec": "s",
    "dollar": "$",
    "cent": "¢",
    "degree": "°",
    "deg": "°",
    "circ": "°",
    "liter": "l",
    "litre": "l",
    "gram": "g",
    "kilogram": "kg",
    "pound": "lb",
    "ounce": "oz",
    "radian": "rad",
}
_GENERIC_UNITS = {
    "",
    "unit",
    "units",
    "square unit",
    "square units",
    "sq unit",
    "sq units",
    "cubic unit",
    "cubic units",
}

# 0.\overline{3}, 0.1\overline{6}, 0.\bar{3}, 0.(3) (only as the whole answer), 0.\dot{3}, 0.\dot{1}4285\dot{7}
_REPEAT_BAR = re.compile(r"(?<![\d.])(\d*)\.(\d*)\s*\\(?:overline|bar)\s*\{\s*(\d+)\s*\}")
_REPEAT_DOT = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\dot\s*\{?(\d)\}?(?:(\d*)\\dot\s*\{?(\d)\}?)?")
_REPEAT_PAREN = re.compile(r"\s*(-?)(\d*)\.(\d*)\((\d+)\)\s*")
_ELLIPSIS = re.compile(r"(?<![\d.])(\d*)\.(\d+)\s*(?:\\ldots|\\cdots|\\dots|\.\.\.|…)")

_DECIMAL = re.compile(r"(?<![\w.\\])(\d*)\.(\d+)(?![\d.])")
_MAX_DECIMAL_DIGITS = 200  # longer decimals stay decimals: the exact fraction would be just as long


@dataclass(frozen=True)
class NormalAnswer:
    """An answer as a human grader reads it: the mathematical part, and its unit if one was written."""

    value: str
    unit: str | None = None
    percent: bool = False  # the value was written with a trailing % (removed from `value`)


def _fraction_latex(value: Fraction) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value.denominator == 1:
        return f"{sign}{value.numerator}"
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def repeating_decimal(integer: str, fixed: str, repetend: str) -> Fraction:
    """integer.fixed(repetend repeated): 0.1(6) = 1/6. Exact."""
    whole = Fraction(int(integer or "0"))
    head = Fraction(int(fixed), 10 ** len(fixed)) if fixed else Fraction(0)
    tail = Fraction(int(repetend), (10 ** len(repetend) - 1) * 10 ** len(fixed))
    return whole + head + tail


def _ellipsis_repetend(fraction_digits: str) -> tuple[str, str] | None:
    """Split "1666" into ("1", "6") when the digits end in a block repeated (a digit 3 times, a block twice)."""
    for length in range(1, 7):
        need = 3 if length == 1 else 2
        if len(fraction_digits) < length * need:
            break
        block = fraction_digits[-length:]
        if fraction_digits.endswith(block * need):
            fixed = fraction_digits[: -length * need]
            while fixed.endswith(block):  # the shortest fixed part: "0.3333..." is 0.(3), not 0.33(3)
                fixed = fixed[:-length]
            return fixed, block
    return None


def _rewrite_repeating(text: str) -> str:
    whole = _REPEAT_PAREN.fullmatch(text)
    if whole:
        value = repeating_decimal(whole.group(2), whole.group(3), whole.group(4))
        return _fraction_latex(-value if whole.group(1) else value)

    def bar(match: re.Match[str]) -> str:
        return _fraction_latex(repeating_decimal(match.group(1), match.group(2), match.group(3)))

    def dot(match: re.Match[str]) -> str:
        integer, fixed, first, middle, last = match.groups()
        repetend = first + (middle or "") + (last or "")
        return _fraction_latex(repeating_decimal(integer, fixed, repetend))

    def ellipsis(match: re.Match[str]) -> str:
        split = _ellipsis_repetend(match.group(2))
        if split is None:
            return match.group(0)  # "3.14159...": an approximation, graded as the decimal it shows
        return _fraction_latex(repeating_decimal(match.group(1), *split))

    text = _REPEAT_BAR.sub(bar, text)
    text = _REPEAT_DOT.sub(dot, text)
    return _ELLIPSIS.sub(ellipsis, text)


def _rewrite_decimals(text: str) -> str:
    def exact(match: re.Match[str]) -> str:
        integer, digits = match.group(1), match.group(2)
        if len(integer) + len(digits) > _MAX_DECIMAL_DIGITS:
            return match.group(0)
        latex = _fraction_latex(Fraction(int(integer or "0") * 10 ** len(digits) + int(digits), 10 ** len(digits)))
        before = text[: match.start()].rstrip()
        return f"{{{latex}}}" if before.endswith(("^", "_")) else latex

    return _DECIMAL.sub(exact, text)


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the `}` matching the `{` at `open_at` (escaped braces do not count), or None."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unwrap_text(text: str) -> str:
    """`\\text{5 apples}` -> `5 apples`: a text group that is the whole answer and starts with a number."""
    match = _TEXT_COMMAND.match(text)
    if match is None:
        return text
    close = _matching_brace(text, match.end() - 1)
    if close != len(text) - 1:
        return text
    inner = text[match.end() : close].strip()
    if not _STARTS_WITH_NUMBER.match(inner):
        return text
    words = _NUMBER_THEN_WORDS.fullmatch(inner)
    return f"{words.group(1)} \\text{{{words.group(2)}}}" if words else inner


def canonical_unit(unit: str) -> str:
    """'\\text{ square centimeters}' -> 'cm^2'; '' for a generic 'units'."""
    words = re.sub(r"\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{([^{}]*)\}", r" \1 ", unit)
    words = words.replace("\\", " ").replace("{", " ").replace("}", " ").replace("~", " ")
    words = re.sub(r"[,;:]", " ", words)
    words = " ".join(words.lower().split())
    if words.rstrip(".") in _GENERIC_UNITS:
        return ""
    power = ""
    match = re.search(r"\s*\^\s*([23])$", words)
    if match:
        power, words = "^" + match.group(1), words[: match.start()]
    for prefix, exponent in (("square ", "^2"), ("sq ", "^2"), ("cubic ", "^3"), ("cu ", "^3")):
        if words.startswith(prefix):
            words, power = words[len(prefix) :], exponent
    for suffix, exponent in ((" squared", "^2"), (" cubed", "^3")):
        if words.endswith(suffix):
            words, power = words[: -len(suffix)], exponent
    words = words.rstrip(".")
    parts = []
    for word in words.split():
        stem = word
        if word.endswith("es") and word[:-2] in _UNIT_ALIASES:  # inches
            stem = word[:-2]
        elif word.endswith("s") and len(word) > 2 and not word.endswith("ss"):  # apples, meters
            stem = word[:-1]
        parts.append(_UNIT_ALIASES.get(stem, _UNIT_ALIASES.get(word, stem)))
    canonical = " ".join(parts) + power
    return "" if canonical in _GENERIC_UNITS else canonical


def split_unit(text: str) -> tuple[str, str | None]:
    """('5', '\\text{ cm}') for '5\\text{ cm}'; (text, None) when no unit follows a number."""
    dollar = _DOLLAR_PREFIX.match(text)
    if dollar and dollar.end() < len(text):
        rest = text[dollar.end() :]
        value, unit = split_unit(rest)
        return (dollar.group(1) + value, "$" if unit is None else unit)
    if text.endswith("^\\circ") and _NUMBER_LIKE.fullmatch(text[: -len("^\\circ")].rstrip()):
        return text[: -len("^\\circ")].rstrip(), "\\circ"
    # units are short: searching only the tail keeps this linear on megabytes of repeated words
    match = _UNIT_TAIL.search(text, max(0, len(text) - _UNIT_WINDOW))
    if match is None or match.start() == 0:
        return text, None
    value = text[: match.start()].rstrip()
    if not value or not re.search(r"[\d}]\s*$", value):
        return text, None  # "x \text{ cm}" or a bare word: not a number with a unit
    return value, match.group(1).strip()


def strip_punctuation(text: str) -> str:
    """'5.' -> '5', '= 5' -> '5'; an ellipsis and a factorial stay. Linear time on any input."""
    text = text.lstrip(" \t\n\r=:")
    while True:
        if text.endswith(_ELLIPSES):
            return text
        stripped = text.rstrip(_TRAILING_CHARS)
        if stripped.endswith(_ELLIPSES) and stripped != text:  # "0.333..." lost its dots: keep them
            return text.rstrip(" \t\n\r,;:?~")
        for command in _TRAILING_COMMANDS:
            if stripped.endswith(command):
                stripped = stripped[: -len(command)]
                break
        if stripped == text:
            return text
        text = stripped


# The same piece three or more times ("5 5 5", "42, 42, 42"): a repetition loop, not an answer.
_SEPARATORS = re.compile(r"(?:\s|,|;|\\[,;: ]|~)+")


def is_repetition(text: str) -> bool:
    """'5 5 5' or '1,1,1,1': one piece repeated, and nothing else (linear time on any length)."""
    pieces = [piece for piece in _SEPARATORS.split(text.strip()) if piece]
    return len(pieces) >= 3 and all(piece == pieces[0] for piece in pieces)


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def strip_math_delimiters(text: str) -> str:
    """'$\\frac{3}{5}$' -> '\\frac{3}{5}' (a gold answer written as LaTeX); '\\$5' keeps its dollar sign."""
    text = text.strip()
    for left, right in _MATH_DELIMITERS:
        inner = text[len(left) : -len(right)]
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            if left != "$" or ("$" not in inner and not text.endswith("\\$")):
                return inner.strip()
    return text


def normalise(text: str) -> NormalAnswer:
    """The answer as a human grader reads it. `text` is the content of a box (or a bare gold answer)."""
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], strip_math_delimiters(text))
    text = _DEGREE.sub(lambda _: "^\\circ", text)
    text = strip_punctuation(text)
    text = _unwrap_text(text)
    text = strip_punctuation(text)
    if text.startswith(("\\dfrac", "\\tfrac")):
        text = "\\frac" + text[6:]
    value, unit = split_unit(text)
    percent = False
    if unit is not None and canonical_unit(unit) in ("percent", "%"):
        value, unit = value + "\\%", None
    stripped = re.sub(r"\s*\\?%$", "", value)
    if stripped != value and stripped:
        value, percent = stripped, True
    if _THOUSANDS.fullmatch(value):
        value = _THOUSANDS_SEPARATOR.sub("", value)
    value = _rewrite_repeating(value)
    value = _rewrite_decimals(value)
    return NormalAnswer(value.strip(), None if unit is None else canonical_unit(unit) or None, percent)


@lru_cache(maxsize=4096)
def normalise_gold(gold: str) -> NormalAnswer:
    """`normalise` for gold answers, cached: a GRPO batch grades several completions against each one."""
    return normalise(gold)


def units_conflict(gold: NormalAnswer, predicted: NormalAnswer) -> bool:
    """Both answers name a unit, and not the same one (5 cm is not 5 m); a missing unit is not a conflict."""
    return gold.unit is not None and predicted.unit is not None and gold.unit != predicted.unit


_SPACING = re.compile(r"\s+|\\[,;:! ]|\\q?quad\b|\\left\b|\\right\b|\\displaystyle\b|~")
_SINGLE_BRACED = re.compile(r"([\^_])\{(\w)\}")


def canonical_text(value: str) -> str:
    """A string normal form: two answers with the same one are the same LaTeX up to spacing and \\dfrac."""
    text = _SPACING.sub("", value)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
    text = text.replace("\\tbinom", "\\binom").replace("{,}", ",")
    return _SINGLE_BRACED.sub(r"\1\2", text)
