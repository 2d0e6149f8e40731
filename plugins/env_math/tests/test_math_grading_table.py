"""Table-driven grading test: (gold, completion) -> the reward a careful human grader gives.

Every row goes through the real path (MathEnvironment.score -> verifier processes), in one batch.
A decimal is the exact number it shows: "0.333333" is not 1/3 and "1.5708" is not pi/2 (math-verify alone
accepts both: it compares floats to 6 places); "0.\\overline{3}" and "0.333..." are 1/3. Excluded on purpose
(graders differ): truncated final boxes ("\\boxed{6" after "\\boxed{5}").
"""

from __future__ import annotations

import math
import warnings

import pytest

from rlx.interfaces import Problem
from rlx_math.env import AllGradingFailedWarning, MathEnvironment
from rlx_math.plugin import MathEnvConfig

HANG = ("timeout", "error")  # what a pathological answer may cost: 0, with a counted status

# (case id, gold, completion, expected reward, allowed statuses or None)
CASES: list[tuple[str, str, str, float, tuple[str, ...] | None]] = [
    # fractions vs decimals, \frac vs \dfrac
    ("frac-vs-decimal", "\\frac{1}{2}", "So the value is \\boxed{0.5}", 1.0, None),
    ("decimal-vs-frac", "0.5", "\\boxed{\\frac{1}{2}}", 1.0, None),
    ("dfrac", "\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0, None),
    ("tfrac", "\\frac{1}{2}", "\\boxed{\\tfrac{1}{2}}", 1.0, None),
    ("frac-shorthand", "\\dfrac{3}{4}", "\\boxed{\\frac34}", 1.0, None),
    ("unreduced-frac", "\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", 1.0, None),
    ("slash-gold", "1/2", "\\boxed{1/2}", 1.0, None),
    ("negative-decimal", "-\\frac{3}{2}", "\\boxed{-1.5}", 1.0, None),
    ("improper-decimal", "2.5", "\\boxed{\\frac{5}{2}}", 1.0, None),
    ("rounded-decimal-wrong", "\\frac{1}{3}", "\\boxed{0.33}", 0.0, ("wrong",)),
    ("sign-wrong", "\\frac{3}{2}", "\\boxed{-\\frac{3}{2}}", 0.0, ("wrong",)),
    ("other-fraction", "0.25", "\\boxed{\\frac{1}{5}}", 0.0, ("wrong",)),
    # units and degrees
    ("unit-text", "5", "\\boxed{5\\text{ cm}}", 1.0, None),
    ("unit-words", "12", "\\boxed{12 \\text{ meters}}", 1.0, None),
    ("degrees-pred", "30", "\\boxed{30^\\circ}", 1.0, None),
    ("degrees-gold", "30^\\circ", "\\boxed{30}", 1.0, None),
    ("degrees-braced", "45^\\circ", "\\boxed{45^{\\circ}}", 1.0, None),
    ("degrees-wrong", "30", "\\boxed{60^\\circ}", 0.0, ("wrong",)),
    ("dollars", "18", "\\boxed{\\$18}", 1.0, None),
    ("percent", "50", "\\boxed{50\\%}", 1.0, None),
    # intervals
    ("interval-same", "(1,2]", "\\boxed{(1, 2]}", 1.0, None),
    ("interval-closed-wrong", "(1,2]", "\\boxed{[1,2]}", 0.0, ("wrong",)),
    ("interval-infinity", "[0,\\infty)", "\\boxed{[0, \\infty)}", 1.0, None),
    ("interval-neg-infinity", "(-\\infty, 3)", "\\boxed{(-\\infty,3)}", 1.0, None),
    ("interval-inequality", "(1,2)", "\\boxed{1<x<2}", 1.0, None),
    ("interval-union", "(-\\infty,0)\\cup(1,\\infty)", "\\boxed{(-\\infty,0) \\cup (1,\\infty)}", 1.0, None),
    ("interval-wrong-end", "[2,5]", "\\boxed{[2,6]}", 0.0, ("wrong",)),
    # sets and lists of answers
    ("set-order", "\\{1,2\\}", "\\boxed{\\{2,1\\}}", 1.0, None),
    ("set-escaped-braces", "\\{1,2\\}", "\\boxed{\\{1,2\\}}", 1.0, None),
    ("list-order", "1,2", "\\boxed{2, 1}", 1.0, None),
    ("roots-order", "-2, 3", "\\boxed{3, -2}", 1.0, None),
    ("set-missing-element", "\\{1,2,3\\}", "\\boxed{\\{1,2\\}}", 0.0, ("wrong",)),
    ("ordered-pair", "(3, 4)", "\\boxed{(3,4)}", 1.0, None),
    # multiple boxes: the last one wins
    ("boxes-last-right", "5", "First \\boxed{3}. Wait, that is wrong. Final: \\boxed{5}", 1.0, None),
    ("boxes-last-wrong", "3", "First \\boxed{3}. Wait, that is wrong. Final: \\boxed{5}", 0.0, ("wrong",)),
    ("boxes-repeated", "7", "So \\boxed{7}. Final answer: \\boxed{7}", 1.0, None),
    ("box-in-box", "5", "\\boxed{\\boxed{5}}", 1.0, None),
    ("fbox", "\\frac{1}{2}", "\\fbox{1/2}", 1.0, None),
    ("box-no-braces", "10", "The answer is \\boxed 10", 1.0, None),
    ("box-in-math", "204", "Thus the answer is $\\boxed{204}$.", 1.0, None),
    # no box: fall back to the last expression
    ("nobox-answer-is", "5", "2 plus 3 gives 5, so the answer is 5", 1.0, None),
    ("nobox-final-answer", "42", "Therefore, the final answer is $42$.", 1.0, None),
    ("nobox-latex-frac", "\\frac{1}{2}", "The probability is $\\frac{1}{2}$.", 1.0, None),
    ("nobox-wrong", "5", "I computed 3 first, then I think it's 7", 0.0, ("wrong",)),
    ("nobox-nothing", "5", "I don't know.", 0.0, ("no_answer",)),
    # nested braces
    ("nested-sqrt-frac", "\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}", 1.0, None),
    ("nested-simplify", "\\sqrt{8}", "\\boxed{2\\sqrt{2}}", 1.0, None),
    ("nested-golden", "\\frac{1+\\sqrt{5}}{2}", "\\boxed{\\frac{1+\\sqrt{5}}{2}}", 1.0, None),
    ("nested-golden-wrong", "\\frac{1+\\sqrt{5}}{2}", "\\boxed{\\frac{1-\\sqrt{5}}{2}}", 0.0, ("wrong",)),
    ("nested-braced-power", "2^{10}", "\\boxed{{2}^{{10}}}", 1.0, None),
    ("nested-pi", "\\frac{\\pi}{2}", "\\boxed{\\frac{\\pi}{2}}", 1.0, None),
    ("sqrt27", "3\\sqrt{3}", "\\boxed{\\sqrt{27}}", 1.0, None),
    ("matrix", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", 1.0, None),
    # text after the box
    ("text-after-box", "5", "\\boxed{5}. This is because 2+3=5, and 7 would be wrong.", 1.0, None),
    ("number-after-box", "5", "\\boxed{5}\n\nI hope it is correct. Problem 12", 1.0, None),
    # </think> present and absent
    ("think-answer-after", "5", "<think>maybe \\boxed{3}?</think>The answer is \\boxed{5}", 1.0, None),
    ("think-box-inside-ignored", "3", "<think>maybe \\boxed{3}?</think>The answer is \\boxed{5}", 0.0, ("wrong",)),
    ("think-open-in-template", "12", "Okay, 3 times 4.\n</think>\n\n**Final Answer**\n\\boxed{12}", 1.0, None),
    ("think-nothing-after", "5", "<think>I think \\boxed{5}</think>", 0.0, ("no_answer",)),
    ("no-think-model", "5", "Let me compute: 2+3 = 5. So \\boxed{5}", 1.0, None),
    ("think-never-closed", "5", "<think>long reasoning... it is \\boxed{5}", 1.0, None),
    # empty output
    ("empty", "5", "", 0.0, ("no_answer",)),
    ("whitespace", "5", "   \n\t", 0.0, ("no_answer",)),
    ("empty-box", "5", "\\boxed{}", 0.0, ("no_answer",)),
    # thousands separators, signs, equations, misc
    ("thousands-comma", "1000", "\\boxed{1,000}", 1.0, None),
    ("thousands-thinspace", "1000", "\\boxed{1\\,000}", 1.0, None),
    ("thousands-braced-comma", "1000000", "\\boxed{1{,}000{,}000}", 1.0, None),
    ("negative", "-3", "\\boxed{-3}", 1.0, None),
    ("negative-wrong", "3", "\\boxed{-3}", 0.0, ("wrong",)),
    ("assignment", "5", "\\boxed{x = 5}", 1.0, None),
    ("polynomial", "x^2+2x+1", "\\boxed{(x+1)^2}", 1.0, None),
    ("trailing-zero", "2", "\\boxed{2.0}", 1.0, None),
    ("choice-letter", "\\text{(B)}", "\\boxed{B}", 1.0, None),
    ("infinity", "\\infty", "\\boxed{\\infty}", 1.0, None),
    ("integer-wrong", "17", "\\boxed{71}", 0.0, ("wrong",)),
    ("latex-gold-in-dollars", "$\\frac{3}{5}$", "\\boxed{0.6}", 1.0, None),
    # gigantic output
    ("gigantic-text-then-box", "5", "blah " * 200_000 + "\\boxed{5}", 1.0, None),
    ("gigantic-no-answer", "5", "x" * 2_000_000, 0.0, ("no_answer",)),
    ("gigantic-number", "5", "\\boxed{" + "1" * 100_000 + "}", 0.0, None),
    ("gigantic-expression-nobox", "5", "1+" * 300_000 + "1", 0.0, None),
    # LaTeX that makes sympy hang or crash: ruled out without sympy (magnitude bounds, exact arithmetic, size)
    ("hang-power-tower", "5", "\\boxed{9^{9^{9^{9}}}}", 0.0, ("wrong",)),
    ("hang-factorials", "5", "\\boxed{100!!!!}", 0.0, ("wrong",)),
    ("hang-parentheses", "5", "\\boxed{" + "(" * 60 + "1" + ")" * 60 + "}", 0.0, ("wrong",)),
    ("deep-nesting", "5", "\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}", 0.0, ("wrong",)),
    ("huge-binomial", "42", "\\boxed{\\binom{85603577131}{42801788565}}", 0.0, ("wrong",)),
    ("huge-product", "42", "\\boxed{\\prod_{k=1}^{768589336041} k}", 0.0, ("wrong",)),
    ("tower-vs-interval", "(1, 2]", "\\boxed{34^{7^{94}} - 2}", 0.0, ("wrong",)),
    ("control-bytes", "5", "\\boxed{5\x00\x07}", 0.0, ("wrong",)),
    # what sympy still cannot finish in time: 0, counted as timeout/error, never a hang
    ("hang-integral", "5", "\\boxed{\\int_0^{\\infty} e^{-x^{435}} dx}", 0.0, HANG),
    # units and symbols next to the number
    ("unit-bare-cm", "5", "\\boxed{5 cm}", 1.0, None),
    ("unit-mathrm", "5", "\\boxed{5\\,\\mathrm{cm}}", 1.0, None),
    ("unit-squared", "5", "\\boxed{5\\text{ cm}^2}", 1.0, None),
    ("unit-both-same", "5 \\text{ cm}", "\\boxed{5 \\text{ centimeters}}", 1.0, None),
    ("unit-gold-only", "5 \\text{ cm}", "\\boxed{5}", 1.0, None),
    ("unit-different", "5 \\text{ cm}", "\\boxed{5 \\text{ m}}", 0.0, ("wrong",)),
    ("unit-area-vs-length", "5 \\text{ cm}^2", "\\boxed{5 \\text{ cm}}", 0.0, ("wrong",)),
    ("unit-right-number-wrong", "12", "\\boxed{13 \\text{ inches}}", 0.0, ("wrong",)),
    ("dollar-bare", "5", "\\boxed{$5}", 1.0, None),
    ("dollar-cents", "1.5", "\\boxed{\\$1.50}", 1.0, None),
    ("dollar-words", "\\$18", "\\boxed{18 \\text{ dollars}}", 1.0, None),
    ("percent-symbol", "5", "\\boxed{5\\%}", 1.0, None),
    ("percent-decimal", "12.5", "\\boxed{12.5\\%}", 1.0, None),
    ("percent-as-fraction", "0.5", "\\boxed{50\\%}", 1.0, None),
    ("percent-wrong", "12.5", "\\boxed{13.5\\%}", 0.0, ("wrong",)),
    ("degrees-90", "90", "\\boxed{90^\\circ}", 1.0, None),
    ("degrees-unicode", "90", "\\boxed{90°}", 1.0, None),
    ("degrees-command", "90^\\circ", "\\boxed{90\\degree}", 1.0, None),
    ("degrees-vs-radians", "30^\\circ", "\\boxed{30 \\text{ radians}}", 0.0, ("wrong",)),
    # repeating decimals, and near misses that are not the exact answer
    ("repeating-overline", "\\frac{1}{3}", "\\boxed{0.\\overline{3}}", 1.0, None),
    ("repeating-bar", "\\frac{1}{3}", "\\boxed{0.\\bar{3}}", 1.0, None),
    ("repeating-block", "\\frac{1}{7}", "\\boxed{0.\\overline{142857}}", 1.0, None),
    ("repeating-after-fixed", "\\frac{1}{6}", "\\boxed{0.1\\overline{6}}", 1.0, None),
    ("repeating-ellipsis", "\\frac{1}{3}", "\\boxed{0.333\\ldots}", 1.0, None),
    ("repeating-dots", "\\frac{2}{3}", "\\boxed{0.666...}", 1.0, None),
    ("repeating-paren", "\\frac{1}{3}", "\\boxed{0.(3)}", 1.0, None),
    ("repeating-mixed", "\\frac{4}{3}", "\\boxed{1.\\overline{3}}", 1.0, None),
    ("repeating-wrong", "\\frac{1}{3}", "\\boxed{0.\\overline{6}}", 0.0, ("wrong",)),
    ("rounded-third", "\\frac{1}{3}", "\\boxed{0.333333}", 0.0, ("wrong",)),
    ("rounded-half-pi", "\\frac{\\pi}{2}", "\\boxed{1.5708}", 0.0, ("wrong",)),
    ("rounded-root", "\\frac{\\sqrt{2}}{2}", "\\boxed{0.707107}", 0.0, ("wrong",)),
    ("truncated-pi", "\\pi", "\\boxed{3.14159\\ldots}", 0.0, ("wrong",)),
    ("near-integer", "5", "\\boxed{5.1}", 0.0, ("wrong",)),
    ("near-integer-tiny", "5", "\\boxed{5.0000001}", 0.0, ("wrong",)),
    ("decimal-exact", "\\frac{1}{8}", "\\boxed{0.125}", 1.0, None),
    ("decimal-trailing-zeros", "2.5", "\\boxed{2.500}", 1.0, None),
    # words inside the box
    ("text-number-noun", "5", "\\boxed{\\text{5 apples}}", 1.0, None),
    ("text-number-only", "5", "\\boxed{\\text{5}}", 1.0, None),
    ("text-noun-plural", "5 \\text{ apples}", "\\boxed{5 \\text{ apple}}", 1.0, None),
    ("text-other-noun", "5 \\text{ apples}", "\\boxed{5 \\text{ oranges}}", 0.0, ("wrong",)),
    ("text-wrong-number", "5", "\\boxed{\\text{6 apples}}", 0.0, ("wrong",)),
    ("assignment-spaced", "5", "\\boxed{x=5}", 1.0, None),
    ("assignment-wrong", "5", "\\boxed{x = 6}", 0.0, ("wrong",)),
    ("text-word-answer", "\\text{Monday}", "\\boxed{\\text{Monday}}", 1.0, None),
    # trailing punctuation
    ("trailing-period", "5", "\\boxed{5.}", 1.0, None),
    ("trailing-comma", "5", "\\boxed{5,}", 1.0, None),
    ("trailing-period-frac", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}.}", 1.0, None),
    ("trailing-period-expr", "x^2", "\\boxed{x^2.}", 1.0, None),
    ("trailing-quad", "7", "\\boxed{7\\quad}", 1.0, None),
    ("factorial-stays", "120", "\\boxed{5!}", 1.0, None),
    ("factorial-not-punctuation", "5", "\\boxed{5!}", 0.0, ("wrong",)),
    # long but valid expressions
    ("long-sum-of-integers", "5050", "\\boxed{" + "+".join(str(i) for i in range(1, 101)) + "}", 1.0, None),
    (
        "long-sum-of-fractions",
        "\\frac{1023}{1024}",
        "\\boxed{" + "+".join(f"\\frac{{1}}{{{2**i}}}" for i in range(1, 11)) + "}",
        1.0,
        None,
    ),
    (
        "long-polynomial",
        "(x+1)^{12}",
        "\\boxed{" + "+".join(f"{math.comb(12, k)}x^{{{k}}}" for k in range(13)) + "}",
        1.0,
        None,
    ),
    (
        "long-polynomial-off-by-one",
        "(x+1)^{12}",
        "\\boxed{" + "+".join(f"{math.comb(12, k) + (k == 6)}x^{{{k}}}" for k in range(13)) + "}",
        0.0,
        ("wrong",),
    ),
    ("long-product", "3628800", "\\boxed{" + "\\cdot ".join(str(i) for i in range(1, 11)) + "}", 1.0, None),
    ("big-power", "1024", "\\boxed{2^{10}}", 1.0, None),
    ("big-integer-exact", str(2**200), "\\boxed{2^{200}}", 1.0, None),
    ("big-integer-off", str(2**200 + 1), "\\boxed{2^{200}}", 0.0, ("wrong",)),
    ("small-sum-notation", "5050", "\\boxed{\\sum_{k=1}^{100} k}", 1.0, None),
    ("repetition-loop", "5", "\\boxed{" + "5 " * 2000 + "}", 0.0, ("wrong",)),
]


@pytest.fixture(scope="module")
def table_scores() -> dict[str, tuple[float, str]]:
    # Ordinary answers get a generous limit (the CPU may be shared); the pathological ones a short one,
    # so that each costs ~2 s instead of the full limit.
    hanging = {c[0] for c in CASES if c[4] is not None and set(c[4]) & set(HANG)}
    results: dict[str, tuple[float, str]] = {}
    for timeout_s, cases in (
        (10.0, [c for c in CASES if c[0] not in hanging]),
        (2.0, [c for c in CASES if c[0] in hanging]),
    ):
        env = MathEnvironment(MathEnvConfig(num_workers=2, timeout_s=timeout_s, kill_grace_s=2.0), seed=0)
        try:
            problems = [Problem(case, ({"role": "user", "content": "q"},), gold) for case, gold, *_ in cases]
            with warnings.catch_warnings():
                # the pathological batch fails to grade as a whole, which is what the warning is for
                warnings.simplefilter("ignore", AllGradingFailedWarning)
                scores = env.score(problems, [completion for _, _, completion, *_ in cases])
        finally:
            env.close()
        results.update({case[0]: (s.reward, s.status) for case, s in zip(cases, scores, strict=True)})
    return results


def test_table_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "gold", "completion", "reward", "statuses"), CASES, ids=[c[0] for c in CASES])
def test_grading_table(
    table_scores: dict[str, tuple[float, str]],
    case: str,
    gold: str,
    completion: str,
    reward: float,
    statuses: tuple[str, ...] | None,
) -> None:
    got_reward, got_status = table_scores[case]
    assert got_reward == reward, f"{case}: reward {got_reward} ({got_status}), a human says {reward}"
    assert (got_status == "correct") == (reward == 1.0)
    if statuses is not None:
        assert got_status in statuses
