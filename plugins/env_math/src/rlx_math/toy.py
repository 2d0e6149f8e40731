"""Synthetic integer arithmetic problems drawn from a seed: the toy task of the embedded CPU demo (no download)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ArithmeticProblem:
    """`text` is e.g. "3+5*2"; `answer` its value as a string; `solution` an ideal short completion."""

    text: str
    answer: str
    solution: str
    distractors: tuple[str, ...] = ()


def near_misses(value: int) -> tuple[str, ...]:
    """Wrong completions of the right form: the answer one too high, the typical slip of an unreliable model.

    The embedded model's warm-up mixes these in (see rlx.models.embedded), so it starts with a systematic
    habit that GRPO has to find and remove.
    """
    return (f"\\boxed{{{value + 1}}}",)


def evaluate(operands: list[int], operators: list[str]) -> int:
    """Value of operands[0] op[0] operands[1] op[1] ... with `*` before `+`/`-` (no eval())."""
    if len(operators) != len(operands) - 1:
        raise ValueError("need exactly one operator between each pair of operands")
    terms = [operands[0]]  # each entry is a product; signs are folded into the products
    for op, value in zip(operators, operands[1:], strict=True):
        if op == "*":
            terms[-1] *= value
        elif op == "+":
            terms.append(value)
        elif op == "-":
            terms.append(-value)
        else:
            raise ValueError(f"unknown operator {op!r}")
    return sum(terms)


def generate(
    count: int,
    *,
    seed: int,
    num_operands: int = 2,
    min_operand: int = 0,
    max_operand: int = 9,
    operators: tuple[str, ...] | list[str] = ("+", "-"),
) -> list[ArithmeticProblem]:
    """`count` problems; the same arguments always give the same problems."""
    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        operands = [rng.randint(min_operand, max_operand) for _ in range(num_operands)]
        ops = [rng.choice(list(operators)) for _ in range(num_operands - 1)]
        text = str(operands[0]) + "".join(f"{op}{value}" for op, value in zip(ops, operands[1:], strict=True))
        value = evaluate(operands, ops)
        answer = str(value)
        problems.append(
            ArithmeticProblem(text=text, answer=answer, solution=f"\\boxed{{{answer}}}", distractors=near_misses(value))
        )
    return problems
