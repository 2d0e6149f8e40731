"""Seeded generator of pathological final answers (what repetition loops and early-RL noise put in a box).

Used by `benchmarks/reward_throughput.py --adversarial` and by the tests: none of these answers equals its
gold answer, so a grader that calls any of them correct is wrong; a good grader also answers each one fast.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Small gold answers of the usual kinds; every adversarial answer below is far from all of them (huge, or
# with free symbols, or not an expression at all).
GOLDS: tuple[str, ...] = (
    "5",
    "42",
    "\\frac{1}{2}",
    "\\frac{7}{12}",
    "2\\sqrt{5}",
    "\\frac{\\pi}{2}",
    "(1, 2]",
    "x^2+1",
)

_SYMBOLS = ("x", "y", "a", "b", "n", "k", "t", "z")
_FUNCTIONS = ("\\sin", "\\cos", "\\tan", "\\log", "\\ln", "\\exp", "\\sqrt")


def _long_symbolic_sum(rng: random.Random) -> str:
    x = rng.choice(_SYMBOLS)
    terms = rng.randint(60, 400)
    style = rng.randrange(4)
    if style == 0:
        return "+".join(f"{rng.randint(1, 99)}{x}^{{{i}}}" for i in range(1, terms))
    if style == 1:
        return "+".join(f"{rng.choice(_FUNCTIONS)}({i}{x})" for i in range(1, terms))
    if style == 2:
        return "+".join(f"\\frac{{{x}^{{{i}}}}}{{{i}+{x}}}" for i in range(1, terms))
    return "".join(f"({x}+{i})" for i in range(1, terms // 4))  # a long product: expand() is quadratic


def _power_tower(rng: random.Random) -> str:
    height = rng.randint(3, 7)
    bases = [str(rng.randint(2, 99)) for _ in range(height)]
    style = rng.randrange(3)
    if style == 0:
        text = bases[-1]
        for base in reversed(bases[:-1]):
            text = f"{base}^{{{text}}}"
        return text
    if style == 1:
        return "^".join(bases)  # 9^9^9^9: right-associative, as a human reads it
    return f"{bases[0]}^{{{bases[1]}^{{{bases[2]}}}}} - {rng.randint(1, 9)}"


def _deep_nesting(rng: random.Random) -> str:
    depth = rng.randint(40, 400)
    style = rng.randrange(5)
    if style == 0:  # 1/(1/(...d)) is d or 1/d: d is never 2 or 5, so it equals no gold answer
        return "\\frac{1}{" * depth + str(rng.choice([3, 4, 6, 7, 8, 9])) + "}" * depth
    if style == 1:
        return "(" * depth + f"{rng.randint(2, 9)}+{rng.choice(_SYMBOLS)}" + ")" * depth
    if style == 2:
        return "\\sqrt{" * depth + str(rng.randint(2, 9)) + "}" * depth
    if style == 3:
        return "{" * depth + str(rng.randint(10**6, 10**7)) + "}" * depth
    return "1+\\frac{1}{" * depth + "1" + "}" * depth  # a continued fraction of Fibonacci ratios, never 5 or 1/2


def _huge_number(rng: random.Random) -> str:
    style = rng.randrange(6)
    if style == 0:
        return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2000, 60000)))
    if style == 1:
        return f"10^{{{rng.randint(10**4, 10**9)}}}"
    if style == 2:
        return f"{rng.randint(1000, 10**6)}!"
    if style == 3:
        return f"{rng.randint(20, 200)}" + "!" * rng.randint(2, 5)
    if style == 4:
        return f"{rng.randint(1, 9)}." + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2000, 30000)))
    return f"{rng.randint(2, 9)}^{{{rng.randint(10**5, 10**8)}}} \\cdot {rng.randint(2, 9)}^{{{rng.randint(10**5, 10**8)}}}"


def _control_bytes(rng: random.Random) -> str:
    noise = "".join(
        chr(rng.choice([0, 1, 7, 8, 11, 12, 27, 127, rng.randint(0, 31)])) for _ in range(rng.randint(5, 400))
    )
    style = rng.randrange(3)
    if style == 0:
        return noise
    if style == 1:
        return f"{rng.randint(100, 999)}{noise}{rng.randint(100, 999)}"
    return "\\frac{" + noise + "}{" + noise[::-1] + "}"


def _repetition_loop(rng: random.Random) -> str:
    unit = rng.choice(["5", "\\frac{1}{2}", "x", "= ", "\\pi", "2\\sqrt{5}", "42, "])
    repeats = rng.randint(50, 3000)
    style = rng.randrange(3)
    if style == 0:
        return unit * repeats
    if style == 1:
        return " ".join([unit] * repeats)
    return "=".join([f"{rng.randint(10**3, 10**4)}"] * repeats)


def _calculus(rng: random.Random) -> str:
    x = rng.choice(_SYMBOLS)
    n = rng.randint(10**6, 10**12)
    return rng.choice(
        [
            f"\\sum_{{{x}=1}}^{{{n}}} {x}^{{{rng.randint(2, 9)}}}",
            f"\\prod_{{{x}=1}}^{{{n}}} {x}",
            f"\\int_0^{{\\infty}} e^{{-{x}^{{{rng.randint(50, 500)}}}}} d{x}",
            f"\\lim_{{{x}\\to\\infty}} (1+\\frac{{1}}{{{x}}})^{{{x}^{{{rng.randint(2, 9)}}}}}",
            f"\\binom{{{n}}}{{{n // 2}}}",
        ]
    )


CATEGORIES: dict[str, Callable[[random.Random], str]] = {
    "long_symbolic_sum": _long_symbolic_sum,
    "power_tower": _power_tower,
    "deep_nesting": _deep_nesting,
    "huge_number": _huge_number,
    "control_bytes": _control_bytes,
    "repetition_loop": _repetition_loop,
    "calculus": _calculus,
}


def adversarial_answers(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`count` distinct (category, gold, completion) triples; the completion boxes a pathological answer.

    Categories take turns, so any prefix of the list covers all of them. Deterministic for a given seed.
    """
    rng = random.Random(seed)
    names = list(CATEGORIES)
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    while len(out) < count:
        category = names[len(out) % len(names)]
        answer = CATEGORIES[category](rng)
        if answer in seen:
            continue
        seen.add(answer)
        gold = GOLDS[rng.randrange(len(GOLDS))]
        out.append((category, gold, f"Let me finish. The answer is \\boxed{{{answer}}}"))
    return out
