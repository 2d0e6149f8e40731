"""The sympy-free fast paths: same verdicts as math-verify where it finishes, none of the adversarial set correct.

Fast and slow paths run in this process (no verifier pool); the slow path is `GradeOptions(fast_paths=False)`.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from test_math_grading_table import CASES

from rlx.interfaces import Problem
from rlx_math import fastpath
from rlx_math.adversarial import CATEGORIES, adversarial_answers
from rlx_math.env import MathEnvironment
from rlx_math.grading import FAST_PATHS, GradeOptions, grade_verdict
from rlx_math.normal_form import normalise, repeating_decimal, units_conflict
from rlx_math.plugin import MathEnvConfig

# Rows where math-verify alone cannot finish in time, so there is no slow verdict to agree with.
SLOW_PATH_GIVES_UP = {
    "hang-power-tower",
    "hang-factorials",
    "hang-parentheses",
    "deep-nesting",
    "huge-binomial",
    "huge-product",
    "hang-integral",
    "gigantic-number",
    "gigantic-expression-nobox",
}

# Cases aimed at the fast paths' own rules: precedence as math-verify reads it, bounds, identities.
EXTRA: list[tuple[str, str]] = [
    ("1024", "\\boxed{2^10}"),
    ("64", "\\boxed{2^3^2}"),  # (2^3)^2, left to right as math-verify reads it
    ("512", "\\boxed{2^3^2}"),
    ("40320", "\\boxed{2^3!}"),  # (2^3)!
    ("\\frac{x}{2y}", "\\boxed{x/2y}"),  # x/(2y)
    ("\\frac{5}{2}", "\\boxed{2\\frac{1}{2}}"),  # a mixed number: left to math-verify
    ("x+1", "\\boxed{\\frac{x^2-1}{x-1}}"),
    ("x+2", "\\boxed{\\frac{x^2-1}{x-1}}"),
    ("x", "\\boxed{\\sqrt{x^2}}"),  # |x| for real x: not an identity the fast path may claim
    ("x^2+1", "\\boxed{y^2+1}"),
    ("7", "\\boxed{\\sum_{k=1}^{3} k + 1}"),
    ("12", "\\boxed{\\sum_{k=1}^{3} k \\cdot 2}"),
    ("48", "\\boxed{\\prod_{k=1}^{3} k \\cdot 2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sin(\\frac{\\pi}{3})}"),
    ("2\\sqrt{5}", "\\boxed{\\sqrt{20}}"),
    ("2\\sqrt{5}", "\\boxed{4.472136}"),
    ("e^2", "\\boxed{e^{2}}"),
    ("\\binom{10}{3}", "\\boxed{120}"),
    ("5", "\\boxed{\\sqrt{x-5}}"),
    ("-1", "\\boxed{i^2}"),  # the imaginary unit: left to math-verify
    ("a_1", "\\boxed{A_1}"),  # math-verify compares long symbol names case-insensitively
    ("(1, 2]", "\\boxed{10^{100}}"),
    ("\\{5\\}", "\\boxed{5}"),
    ("6", "\\boxed{3!}"),
    ("720", "\\boxed{3!!}"),  # (3!)!
    ("\\frac{1}{3}", "\\boxed{" + "+".join(["\\frac{1}{9}"] * 3) + "}"),
]


def _agreement_cases() -> list[tuple[str, str, str]]:
    rows = [(case, gold, completion) for case, gold, completion, *_ in CASES if case not in SLOW_PATH_GIVES_UP]
    return rows + [(f"extra-{i}", gold, completion) for i, (gold, completion) in enumerate(EXTRA)]


@pytest.mark.parametrize(("case", "gold", "completion"), _agreement_cases(), ids=[c[0] for c in _agreement_cases()])
def test_fast_paths_give_the_slow_paths_verdict(case: str, gold: str, completion: str) -> None:
    fast = grade_verdict(gold, completion, GradeOptions(timeout_s=20.0))
    slow = grade_verdict(gold, completion, GradeOptions(timeout_s=20.0, fast_paths=False))
    assert slow.status != "timeout", f"{case}: the slow path timed out; list it in SLOW_PATH_GIVES_UP"
    assert fast.status == slow.status, f"{case}: fast {fast} but slow {slow}"


def test_fast_paths_decide_the_table_mostly_without_sympy() -> None:
    paths = Counter(
        grade_verdict(gold, completion, GradeOptions(timeout_s=20.0)).path for _, gold, completion in _agreement_cases()
    )
    assert sum(n for path, n in paths.items() if path in FAST_PATHS) >= 0.7 * sum(paths.values()), paths


def test_no_adversarial_answer_is_judged_correct() -> None:
    triples = adversarial_answers(140, seed=0)
    assert len({completion for _, _, completion in triples}) == 140
    assert Counter(category for category, _, _ in triples) == {name: 20 for name in CATEGORIES}
    verdicts = [grade_verdict(gold, completion, GradeOptions(timeout_s=1.0)) for _, gold, completion in triples]
    assert [v for v in verdicts if v.status == "correct"] == []
    fast = sum(v.fast for v in verdicts)
    # what still reaches sympy is mostly unevaluated integrals and sums; the rest is decided without it
    assert fast >= 0.8 * len(verdicts), Counter(v.path for v in verdicts)


def test_adversarial_answers_are_deterministic() -> None:
    assert adversarial_answers(30, seed=7) == adversarial_answers(30, seed=7)
    assert adversarial_answers(30, seed=7) != adversarial_answers(30, seed=8)


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        ("5", "5", True),
        ("\\frac{1}{2}", "\\frac{2}{4}", True),
        ("\\frac{1}{3}", "\\frac{333333}{1000000}", False),
        ("2\\sqrt{5}", "\\sqrt{20}", None),  # equal irrationals: intervals overlap, sympy decides
        ("2\\sqrt{5}", "\\frac{447}{100}", False),
        ("x^2+2x+1", "(x+1)^2", True),
        ("x^2+1", "(x+1)^2", False),
        ("5", "9^{9^{9^{9}}}", False),
        ("5", "34^{7^{94}} - 2", False),
        ("5", "9^{9^{9}} - 9^{9^{9}} + 5", None),  # huge minus huge: no bound
        ("5", "678024!", False),
        ("5", "100!!!!", False),
        ("5", "\\binom{85603577131}{42801788565}", False),
        ("5", "\\sum_{y=1}^{665110663129} y^{5}", False),
        ("5050", "\\sum_{k=1}^{100} k", True),
        ("0", "\\prod_{k=-3}^{10^{12}} k", True),
        ("x", "\\sqrt{x^2}", None),
        ("5", "\\sqrt{x-5}", None),
        ("5", "9" * 60_000, False),
    ],
)
def test_fastpath_compare(gold: str, predicted: str, expected: bool | None) -> None:
    assert fastpath.compare(fastpath.parse(gold), fastpath.parse(predicted)) is expected


@pytest.mark.parametrize("text", ["x = 5", "(1, 2]", "\\int_0^1 x dx", "f(x)", "2 3", "\\log 100", "\\sin 2x"])
def test_fastpath_declines_what_it_does_not_read_like_math_verify(text: str) -> None:
    with pytest.raises(fastpath.Undecided):
        fastpath.parse(text)


@pytest.mark.parametrize(
    ("text", "value", "unit", "percent"),
    [
        ("5 cm", "5", "cm", False),
        ("5\\text{ cm}^2", "5", "cm^2", False),
        ("5 \\text{ square centimeters}", "5", "cm^2", False),
        ("\\$1.50", "\\frac{3}{2}", "$", False),
        ("18 \\text{ dollars}", "18", "$", False),
        ("12.5\\%", "\\frac{25}{2}", None, True),
        ("50\\text{ percent}", "50", None, True),
        ("90°", "90", "°", False),
        ("90^{\\circ}", "90", "°", False),
        ("\\sin 30^\\circ", "\\sin 30^\\circ", None, False),  # the degree sign belongs to the argument
        ("\\text{5 apples}", "5", "apple", False),
        ("0.\\overline{3}", "\\frac{1}{3}", None, False),
        ("0.1\\overline{6}", "\\frac{1}{6}", None, False),
        ("0.\\dot{1}4285\\dot{7}", "\\frac{1}{7}", None, False),
        ("0.142857142857\\ldots", "\\frac{1}{7}", None, False),
        ("3.14159\\ldots", "\\frac{314159}{100000}\\ldots", None, False),  # no repeating block: an approximation
        ("0.333333", "\\frac{333333}{1000000}", None, False),
        ("x^{0.5}", "x^{\\frac{1}{2}}", None, False),
        ("5.", "5", None, False),
        ("= 5;", "5", None, False),
        ("5!", "5!", None, False),
        ("5x", "5x", None, False),  # a variable, not a unit
        ("1{,}000{,}000", "1000000", None, False),
        ("$\\frac{3}{5}$", "\\frac{3}{5}", None, False),
    ],
)
def test_normalise(text: str, value: str, unit: str | None, percent: bool) -> None:
    assert normalise(text) == type(normalise(text))(value, unit, percent)


def test_units_conflict_only_when_both_name_a_unit() -> None:
    assert units_conflict(normalise("5 \\text{ cm}"), normalise("5 \\text{ m}"))
    assert not units_conflict(normalise("5 \\text{ cm}"), normalise("5 \\text{ centimeters}"))
    assert not units_conflict(normalise("5"), normalise("5 \\text{ m}"))
    assert not units_conflict(normalise("5 \\text{ square units}"), normalise("5 \\text{ cm}^2"))


def test_repeating_decimal_is_exact() -> None:
    assert repeating_decimal("0", "", "3") == Fraction(1, 3)
    assert repeating_decimal("1", "2", "34") == Fraction(1222, 990)
    assert repeating_decimal("", "", "9") == 1


def test_environment_reports_the_last_batch_grading_stats() -> None:
    env = MathEnvironment(MathEnvConfig(num_workers=0, timeout_s=5.0), seed=0)
    problems = [
        Problem(f"p{i}", ({"role": "user", "content": "q"},), gold) for i, gold in enumerate(["5", "5", "x^2", "(1,2)"])
    ]
    completions = ["\\boxed{5}", "\\boxed{5}", "\\boxed{9^{9^{9^9}}}", "\\boxed{1<x<2}"]
    scores = env.score(problems, completions)
    assert [s.status for s in scores] == ["correct", "correct", "wrong", "correct"]
    stats = env.last_grading_stats
    assert (stats.completions, stats.graded, stats.fast, stats.timed_out) == (4, 3, 2, 0)
    assert stats.by_path == {"string": 1, "arithmetic": 1, "sympy": 1}
    metrics = stats.metrics()
    assert set(metrics) == {
        "reward/grading_s",
        "reward/graded",
        "reward/fast_fraction",
        "reward/timeouts",
        "reward/sympy",
    }
    assert metrics["reward/fast_fraction"] == pytest.approx(2 / 3) and metrics["reward/sympy"] == 1.0
    assert metrics["reward/grading_s"] > 0
    assert env.stats()["path/string"] == 1
