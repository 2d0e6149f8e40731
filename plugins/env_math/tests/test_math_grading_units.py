"""Answer extraction pieces: last box, think handling, the answer key the parent dedups on, integer fast path."""

from __future__ import annotations

import pytest
from test_math_grading_table import CASES, HANG

from rlx_math import grading
from rlx_math.grading import GradeOptions, answer_key, answer_region, grade, last_boxed, normalise_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} b \\boxed{2} c", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed{\\}}", "\\}"),
        ("\\boxed{5} and then \\boxed{6", "5"),  # the unclosed (truncated) last box is ignored
        ("\\boxed{5 \\boxedfoo } x", "5 \\boxedfoo "),  # a non-box command inside a box
        ("\\boxed 42.", "42"),
        ("\\fbox{7}", "7"),
        ("no box here", None),
        ("\\boxed{", None),
        ("\\boxed{}", ""),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_last_boxed_is_linear_on_many_unclosed_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    # counted, not timed: every brace scan stops at the start of the later (unclosed) box, so together they
    # cover each character at most once; a quadratic scan would cover ~n^2 / 2 here
    scanned: list[int] = []
    braced = grading._braced

    def counting(text: str, open_at: int, limit: int) -> int | None:
        scanned.append(limit - open_at)
        return braced(text, open_at, limit)

    monkeypatch.setattr(grading, "_braced", counting)
    text = "\\boxed{5}" + "\\boxed{" * 200_000
    assert last_boxed(text) == "5"
    assert len(scanned) == 200_001 and sum(scanned) <= len(text)


def test_answer_region() -> None:
    assert answer_region("a</think>b</think>c") == "c"
    assert answer_region("no think") == "no think"
    assert answer_region("no think", require_think_close=True) is None


def test_normalise_boxed_thousands() -> None:
    assert normalise_boxed(" 1\\,234\\,567 ") == "1234567"
    assert normalise_boxed("1{,}000.5") == "\\frac{2001}{2}"  # decimals become exact fractions
    assert normalise_boxed("1, 2") == "1, 2"  # a list, not a number with separators
    assert normalise_boxed("12,34") == "12,34"


def test_integer_fast_path() -> None:
    options = GradeOptions(timeout_s=2.0)
    assert grade("025", "\\boxed{25}", options) == "correct"
    assert grade("-0", "\\boxed{0}", options) == "correct"
    assert grade("+7", "\\boxed{7}", options) == "correct"
    assert grade("70", "\\boxed{7}", options) == "wrong"
    assert grade("5", "\\boxed{" + "9" * 50_000 + "}", options) == "wrong"


@pytest.mark.parametrize("require_think_close", [False, True])
def test_answer_key_grades_like_the_full_completion(require_think_close: bool) -> None:
    options = GradeOptions(timeout_s=10.0, require_think_close=require_think_close)
    for case, gold, completion, _, statuses in CASES:
        if statuses is not None and set(statuses) & set(HANG):
            continue  # pathological: each would spend the whole time limit twice
        key = answer_key(completion, options)
        assert len(key) <= len("</think>") + max(options.fallback_tail_chars, 100_100), case
        assert grade(gold, key, options) == grade(gold, completion, options), case
