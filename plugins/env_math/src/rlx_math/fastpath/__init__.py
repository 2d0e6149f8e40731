"""Decides easy and pathological answers without sympy: exact rational arithmetic, interval bounds, magnitudes.

A small parser reads the LaTeX that math-verify would parse (after its own normalisation) when it uses only
numbers, one-letter symbols, + - * / ^ !, \\frac, \\sqrt, \\binom, \\pi, e, a few functions and \\prod of the
index; anything else is `None` (undecided: sympy decides). Values are exact `Fraction`s, mpmath intervals, or
`AtLeast` lower bounds for numbers too large to write down (9^{9^{9^9}}), so a verdict is only given when it
is certain: equal exact numbers are `True`, provably different values are `False`. Symbols are replaced by
fixed random rationals: different values at a point prove the expressions differ; equal rational functions
at two random points are accepted (Schwartz-Zippel; the chance of a wrong "equal" is below 2^-50).

Modules: `parsing` (tokens -> tree, `Undecided`), `values` (exact numbers, intervals and bounds, `evaluate`); this
one compares (`compare`, `exceeds`), which is what `rlx_math.grading` calls.
"""

from __future__ import annotations

import random
from fractions import Fraction
from functools import lru_cache

from mpmath import iv

from rlx_math.fastpath.parsing import MAX_DEPTH, MAX_TOKENS, Parsed, Undecided, parse, tokenize
from rlx_math.fastpath.values import AtLeast, Value, evaluate, finite_upper_log2, interval, log2_interval

__all__ = [
    "MAX_DEPTH", "MAX_TOKENS", "AtLeast", "Parsed", "Undecided", "Value", "compare", "evaluate", "exceeds", "parse",
    "tokenize",
]


@lru_cache(maxsize=4096)
def _point(name: str, draw: int) -> Fraction:
    """A fixed random rational in (1, 2) for a symbol: the same for gold and prediction."""
    rng = random.Random(f"{draw}:{name}")
    return 1 + Fraction(rng.getrandbits(62) | 1, 2**62)


def _relation(gold: Value, predicted: Value) -> str:
    """'equal' (exact and equal), 'different' (provably), or 'unknown'."""
    if isinstance(gold, Fraction) and isinstance(predicted, Fraction):
        return "equal" if gold == predicted else "different"
    if isinstance(gold, AtLeast) and isinstance(predicted, AtLeast):
        return "unknown"
    if isinstance(gold, AtLeast) or isinstance(predicted, AtLeast):
        big, other = (gold, predicted) if isinstance(gold, AtLeast) else (predicted, gold)
        assert isinstance(big, AtLeast)
        return "different" if finite_upper_log2(other) < big.log2_lower - 1 else "unknown"
    g, p = interval(gold), interval(predicted)
    return "different" if g.b < p.a or p.b < g.a else "unknown"


def compare(gold: Parsed, predicted: Parsed) -> bool | None:
    """True/False when certain that `predicted` equals `gold` (as math-verify would judge), else None."""
    symbols = gold.symbols | predicted.symbols
    if gold.by_name or predicted.by_name or len({name.lower() for name in symbols}) < len(symbols):
        return None  # math-verify compares long symbol names case-insensitively: leave those to it
    # with symbols, equal values prove equality only for rational functions (sqrt(x^2) is |x|, not x)
    identity_test = not symbols or (gold.rational and predicted.rational)
    draws = 2 if symbols else 1
    for draw in range(draws):
        point = {name: _point(name, draw) for name in symbols}
        try:
            relation = _relation(evaluate(gold.tree, point), evaluate(predicted.tree, point))
        except Undecided:
            return None
        except (ZeroDivisionError, OverflowError, ValueError):
            return None
        if relation == "different":
            return False
        if relation == "unknown":
            return None
    # equal exact values at every point: identical numbers, or (with symbols) rational functions that agree at
    # two random points, which are the same function with probability above 1 - 2^-50
    return True if identity_test else None


def exceeds(predicted: Parsed, log2_bound: float) -> bool:
    """Whether `predicted` (without symbols) is provably larger in magnitude than 2^log2_bound."""
    if predicted.symbols:
        return False
    try:
        value = evaluate(predicted.tree, {})
    except (Undecided, ZeroDivisionError, OverflowError, ValueError):
        return False
    if isinstance(value, AtLeast):
        return value.log2_lower > log2_bound
    if isinstance(value, Fraction):
        return value != 0 and float(log2_interval(value).a) > log2_bound
    low = abs(value).a
    return bool(low > 0 and float((iv.log(iv.mpf(low)) / iv.log(2)).a) > log2_bound)
