"""Decides easy and pathological answers without sympy: exact rational arithmetic, interval bounds, magnitudes.

A small parser reads the LaTeX that math-verify would parse (after its own normalisation) when it uses only
numbers, one-letter symbols, + - * / ^ !, \\frac, \\sqrt, \\binom, \\pi, e, a few functions and \\prod of the
index; anything else is `None` (undecided: sympy decides). Values are exact `Fraction`s, mpmath intervals, or
`AtLeast` lower bounds for numbers too large to write down (9^{9^{9^9}}), so a verdict is only given when it
is certain: equal exact numbers are `True`, provably different values are `False`. Symbols are replaced by
fixed random rationals: different values at a point prove the expressions differ; equal rational functions
at two random points are accepted (Schwartz-Zippel; the chance of a wrong "equal" is below 2^-50).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from mpmath import iv

MAX_TOKENS = 20_000
MAX_DEPTH = 100  # nesting of groups (a \frac level counts 2); the parser recurses about 3 frames per count
EXACT_BITS = 20_000  # larger exact numbers become intervals
INTERVAL_LOG2 = 2.0**24  # |x| above 2^(2^24) (5 million digits): only a lower bound is kept
LOG2_CAP = 1e300  # lower bounds beyond 2^(10^300) are capped (still sound: a lower bound)
EXACT_FACTORIAL = 3000
EXACT_BINOMIAL = 5000


class Undecided(Exception):
    """The expression is outside what this module decides soundly; sympy must decide."""


@dataclass(frozen=True)
class AtLeast:
    """A real number with |x| >= 2^log2_lower; sign +1/-1, or 0 if unknown."""

    log2_lower: float
    sign: int = 0


Value = Fraction | Any | AtLeast  # Any: an mpmath interval (iv.mpf)

# ------------------------------------------------------------------------------------------ tokens

_TOKEN = re.compile(
    r"\s+|\\[,;:! ]|~|\\q?quad(?![A-Za-z])|\\(?:left|right|displaystyle|big|Big|bigl|bigr|Bigl|Bigr)(?![A-Za-z])"
    r"|(?P<num>\d+(?:\.\d+)?)|(?P<cmd>\\[A-Za-z]+)|(?P<letter>[A-Za-z])|(?P<char>[-+*/^_(){}!=,\[\]])"
)
_GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta kappa lambda mu nu xi rho sigma tau "
    "upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega".split()
)
_FUNCTIONS = frozenset({"sin", "cos", "tan", "ln", "exp"})
_FRACS = frozenset({"frac", "dfrac", "tfrac"})
_BINOMS = frozenset({"binom", "dbinom", "tbinom"})
_MUL = frozenset({"*", "\\cdot", "\\times"})
_DIV = frozenset({"/", "\\div"})


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; kinds: num, cmd, letter, char. Raises Undecided on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise Undecided(f"character {text[pos]!r}")
        pos = match.end()
        kind = match.lastgroup
        if kind is None:
            continue  # spacing
        tokens.append((kind, match.group(kind)))
        if len(tokens) > MAX_TOKENS:
            raise Undecided("too many tokens")
    return tokens


# ------------------------------------------------------------------------------------------ parser
# The tree is nested tuples: ("num", Fraction) ("big", digits, integer_digits) ("sym", name) ("pi",) ("e",)
# ("neg", a) ("add", terms) ("mul", ((is_division, factor), ...)) ("post", base, (("^", exponent) | ("!",), ...))
# ("div", a, b) ("root", a, n) ("fn", name, a) ("binom", n, k) ("series", "sum"|"prod", var, low, high, body).
# Sums, products and
# power chains are flat, so 400 terms do not make the tree 400 levels deep.


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.symbols: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise Undecided("unexpected end")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token[1] != text:
            raise Undecided(f"expected {text!r}, got {token[1]!r}")

    def parse(self) -> tuple[Any, ...]:
        node = self.sum()
        if self.peek() is not None:
            raise Undecided(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Undecided("nested too deeply")

    def sum(self) -> tuple[Any, ...]:
        self.enter()
        terms: list[tuple[Any, ...]] = []
        while True:
            sign = 1
            token = self.peek()
            while token is not None and token[0] == "char" and token[1] in "+-":  # the operator and any signs
                self.take()
                sign = -sign if token[1] == "-" else sign
                token = self.peek()
            term = self.product()
            terms.append(("neg", term) if sign < 0 else term)
            token = self.peek()
            if token is None or token[0] != "char" or token[1] not in "+-":
                break
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def product(self) -> tuple[Any, ...]:
        """Explicit * and / between implicit products: math-verify reads x/2y as x/(2y)."""
        items: list[tuple[bool, tuple[Any, ...]]] = [(False, self.implicit_product())]
        while True:
            token = self.peek()
            if token is None or token[0] not in ("char", "cmd") or token[1] not in _MUL | _DIV:
                break
            self.take()
            items.append((token[1] in _DIV, self.implicit_product()))
        return items[0][1] if len(items) == 1 else ("mul", tuple(items))

    def implicit_product(self) -> tuple[Any, ...]:
        items = [(False, self.power())]
        while True:
            token = self.peek()
            if token is None or not self.starts_primary(token):
                break
            kind, text = token
            if kind == "num":
                raise Undecided("a number right after another factor")  # "2 3", "x2"
            if items[-1][1][0] == "num" and kind == "cmd" and text[1:] in _FRACS:
                raise Undecided("a mixed number")  # math-verify reads 2\frac{1}{2} as 5/2
            items.append((False, self.power()))
        return items[0][1] if len(items) == 1 else ("mul", tuple(items))

    @staticmethod
    def starts_primary(token: tuple[str, str]) -> bool:
        kind, text = token
        return kind in ("num", "letter", "cmd") and text not in _MUL | _DIV or text in ("(", "{")

    def power(self) -> tuple[Any, ...]:
        """A primary, then ^ and ! applied left to right: math-verify reads 2^3^2 as (2^3)^2, 2^3! as (2^3)!."""
        base = self.primary()
        ops: list[tuple[Any, ...]] = []
        while True:
            token = self.peek()
            if token == ("char", "^"):
                self.take()
                ops.append(("^", self.script()))
            elif token == ("char", "!"):
                self.take()
                ops.append(("!",))
            else:
                break
        return ("post", base, tuple(ops)) if ops else base

    def script(self) -> tuple[Any, ...]:
        """A superscript: a braced group or one token (math-verify reads x^23 as x^{23}, not TeX's x^{2}3)."""
        token = self.take()
        if token == ("char", "{"):
            self.enter()
            node = self.sum()
            self.expect("}")
            self.depth -= 1
            return node
        kind, text = token
        if kind == "num":
            return self.number(text)
        if kind == "letter":
            return self.letter(text)
        if kind == "cmd" and text == "\\pi":
            return ("pi",)
        raise Undecided(f"exponent {text!r}")

    @staticmethod
    def number(text: str) -> tuple[Any, ...]:
        whole, _, digits = text.partition(".")
        if len(text) > 400:
            return ("big", whole + digits, len(whole))
        return ("num", Fraction(int(whole + digits), 10 ** len(digits)))

    def group(self) -> tuple[Any, ...]:
        """A braced argument, or one token as TeX reads \\frac12 and \\sqrt2."""
        token = self.peek()
        if token == ("char", "{"):
            self.take()
            node = self.sum()
            self.expect("}")
            return node
        kind, text = self.take()
        if kind == "num" and len(text) == 1:
            return ("num", Fraction(int(text)))
        if kind == "letter":
            return self.letter(text)
        raise Undecided(f"argument {text!r}")

    def letter(self, name: str) -> tuple[Any, ...]:
        if name in ("i", "j", "E"):
            raise Undecided("i/j/E: complex unit or a constant in math-verify")
        if name == "e":
            return ("e",)
        if self.peek() == ("char", "_"):
            self.take()
            name = f"{name}_{self.subscript()}"
        if self.peek() == ("char", "("):
            raise Undecided("f(x): a function call or a product")
        self.symbols.add(name)
        return ("sym", name)

    def subscript(self) -> str:
        token = self.take()
        if token == ("char", "{"):
            parts = []
            while self.peek() != ("char", "}"):
                kind, text = self.take()
                if kind not in ("num", "letter"):
                    raise Undecided("a subscript that is not a name")
                parts.append(text)
            self.take()
            return "".join(parts)
        if token[0] in ("num", "letter"):
            return token[1]
        raise Undecided("subscript")

    def primary(self) -> tuple[Any, ...]:
        kind, text = self.take()
        if kind == "num":
            return self.number(text)
        if kind == "letter":
            return self.letter(text)
        if text in ("(", "{") and kind == "char":
            self.enter()
            node = self.sum()
            self.expect(")" if text == "(" else "}")
            self.depth -= 1
            return node
        if kind == "cmd":
            name = text[1:]
            if name in _FRACS:
                self.enter()
                numerator = self.group()
                denominator = self.group()
                self.depth -= 1
                return ("div", numerator, denominator)
            if name == "sqrt":
                degree: tuple[Any, ...] = ("num", Fraction(2))
                if self.peek() == ("char", "["):
                    self.take()
                    degree = self.sum()
                    self.expect("]")
                self.enter()
                node = ("root", self.group(), degree)
                self.depth -= 1
                return node
            if name in _BINOMS:
                self.enter()
                node = ("binom", self.group(), self.group())
                self.depth -= 1
                return node
            if name == "pi":
                return ("pi",)
            if name in _FUNCTIONS:
                if self.peek() not in (("char", "("), ("char", "{")):
                    raise Undecided("a function without parentheses")  # \sin 2x: where does it end?
                return ("fn", name, self.primary())
            if name in _GREEK:
                self.symbols.add(name)
                return ("sym", name)
            if name in ("sum", "prod"):
                return self.series(name)
        raise Undecided(f"token {text!r}")

    def series(self, kind: str) -> tuple[Any, ...]:
        """\\sum_{k=a}^{b} body / \\prod_{k=a}^{b} body; math-verify's body runs to the next + or -."""
        self.expect("_")
        self.expect("{")
        token, var = self.take()
        if token != "letter" or var in ("e", "i", "j", "E"):
            raise Undecided("series index")
        self.expect("=")
        low = self.sum()
        self.expect("}")
        self.expect("^")
        high = self.script()
        outside = set(self.symbols)
        self.enter()
        body = self.product()
        self.depth -= 1
        self.symbols = outside | (self.symbols - {var})  # the index is bound inside the body
        return ("series", kind, var, low, high, body)


@dataclass(frozen=True)
class Parsed:
    tree: tuple[Any, ...]
    symbols: frozenset[str]
    by_name: bool  # math-verify may compare its symbols by name rules (a_1 == A_1), not as values
    rational: bool  # only + - * / and integer powers: exact values at points identify the function


def _symbol_comparison_rules(tree: tuple[Any, ...], symbols: frozenset[str]) -> bool:
    """Whether math-verify might compare these symbols by name rules (case-insensitive for long names)."""
    if tree[0] == "sym" and len(tree[1]) > 1:
        return True
    return len({name.lower() for name in symbols}) < len(symbols)


def _is_rational(node: tuple[Any, ...]) -> bool:
    """Only + - * / and integer literal powers (no roots, functions, factorials, constants)."""
    kind = node[0]
    if kind in ("num", "sym"):
        return True
    if kind == "neg":
        return _is_rational(node[1])
    if kind == "add":
        return all(_is_rational(t) for t in node[1])
    if kind == "mul":
        return all(_is_rational(f) for _, f in node[1])
    if kind == "div":
        return _is_rational(node[1]) and _is_rational(node[2])
    if kind == "post":
        return _is_rational(node[1]) and all(
            op[0] == "^" and op[1][0] == "num" and op[1][1].denominator == 1 for op in node[2]
        )
    return False


def parse(text: str) -> Parsed:
    """Parse normalised LaTeX (as math-verify sees it). Raises Undecided outside the supported subset."""
    parser = _Parser(tokenize(text))
    if not parser.tokens:
        raise Undecided("empty")
    tree = parser.parse()
    symbols = frozenset(parser.symbols)
    return Parsed(tree, symbols, _symbol_comparison_rules(tree, symbols), _is_rational(tree))


# ------------------------------------------------------------------------------------------ values


def _log2_interval(value: Value) -> Any:
    """log2|value| as an interval (value must be nonzero and finite)."""
    if isinstance(value, Fraction):
        if value == 0:
            raise Undecided("log of zero")
        magnitude = abs(value)
        # exact bit lengths keep this cheap for 20,000-bit numbers
        shift = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
        scaled = magnitude / Fraction(2) ** shift if shift >= 0 else magnitude * Fraction(2) ** -shift
        return iv.log(_interval(scaled)) / iv.log(2) + shift
    lower, upper = abs(value).a, abs(value).b
    if lower <= 0:
        raise Undecided("interval contains zero")
    return iv.log(iv.mpf([lower, upper])) / iv.log(2)


def _interval(value: Value) -> Any:
    if isinstance(value, AtLeast):
        raise Undecided("no finite interval")
    if isinstance(value, Fraction):
        return iv.mpf(value.numerator) / iv.mpf(value.denominator)
    return value


def _check_exact(value: Fraction) -> Value:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > EXACT_BITS:
        return _interval(value)
    return value


def _finite_upper_log2(value: Value) -> float:
    if isinstance(value, Fraction):
        return float(abs(value).numerator.bit_length() - abs(value).denominator.bit_length() + 1)
    upper = abs(value).b
    if upper == 0:
        return -math.inf
    return float((iv.log(iv.mpf(upper)) / iv.log(2)).b)


def _sign(value: Value) -> int:
    if isinstance(value, AtLeast):
        return value.sign
    if isinstance(value, Fraction):
        return (value > 0) - (value < 0)
    if value.a > 0:
        return 1
    if value.b < 0:
        return -1
    return 0


def _from_log2(log2: Any, sign: int) -> Value:
    """sign * 2^log2 for an interval log2: an interval, or AtLeast when too large to hold."""
    if log2.a > INTERVAL_LOG2:
        return AtLeast(min(float(log2.a), LOG2_CAP), sign)
    if log2.b > INTERVAL_LOG2:
        raise Undecided("magnitude straddles the interval limit")
    if log2.b < -INTERVAL_LOG2:
        raise Undecided("too small to bound")
    magnitude = iv.mpf(2) ** log2
    return magnitude if sign >= 0 else -magnitude


def _add(a: Value, b: Value) -> Value:
    if isinstance(a, AtLeast) or isinstance(b, AtLeast):
        if isinstance(a, AtLeast) and isinstance(b, AtLeast):
            if a.sign != 0 and a.sign == b.sign:
                return AtLeast(max(a.log2_lower, b.log2_lower), a.sign)
            raise Undecided("huge minus huge")
        big, small = (a, b) if isinstance(a, AtLeast) else (b, a)
        assert isinstance(big, AtLeast)
        if _finite_upper_log2(small) > big.log2_lower - 2:
            raise Undecided("sum of comparable magnitudes")
        return AtLeast(big.log2_lower - 1, big.sign)  # |big + small| >= |big| - |big|/2
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return _check_exact(a + b)
    return _interval(a) + _interval(b)


def _neg(a: Value) -> Value:
    if isinstance(a, AtLeast):
        return AtLeast(a.log2_lower, -a.sign)
    return -a


def _mul(a: Value, b: Value) -> Value:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return _check_exact(a * b)
    if isinstance(a, AtLeast) or isinstance(b, AtLeast):
        if (isinstance(a, Fraction) and a == 0) or (isinstance(b, Fraction) and b == 0):
            return Fraction(0)
        lower = sum(x.log2_lower if isinstance(x, AtLeast) else float(_log2_interval(x).a) for x in (a, b))
        return AtLeast(min(lower, LOG2_CAP), _sign(a) * _sign(b))
    return _interval(a) * _interval(b)


def _div(a: Value, b: Value) -> Value:
    if isinstance(b, Fraction) and b == 0:
        raise Undecided("division by zero")
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return _check_exact(a / b)
    if isinstance(b, AtLeast):
        raise Undecided("divided by a huge number")
    if isinstance(a, AtLeast):
        return AtLeast(a.log2_lower - _finite_upper_log2(b), a.sign * _sign(b))
    denominator = _interval(b)
    if denominator.a <= 0 <= denominator.b:
        raise Undecided("division by an interval around zero")
    return _interval(a) / denominator


def _integer(value: Value) -> int | None:
    if isinstance(value, Fraction) and value.denominator == 1:
        return value.numerator
    return None


def _pow(base: Value, exponent: Value) -> Value:
    n = _integer(exponent)
    if isinstance(base, Fraction) and n is not None:
        if base == 0:
            if n < 0:
                raise Undecided("0 to a negative power")
            return Fraction(1 if n == 0 else 0)
        if abs(base) == 1:
            return base ** (n % 2) if base < 0 else Fraction(1)
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(n) * bits <= EXACT_BITS:
            return base**n
        sign = -1 if base < 0 and n % 2 else 1
        return _from_log2(_log2_interval(base) * n, sign)
    if isinstance(exponent, AtLeast):
        if exponent.sign != 1:
            raise Undecided("a huge exponent of unknown sign")
        if isinstance(base, AtLeast):
            lower_base = base.log2_lower
        else:
            lower_base = float(_log2_interval(base).a)
        if lower_base <= 0 or (isinstance(base, AtLeast) and base.sign == 0):
            raise Undecided("a huge power of a base not above 1")
        if _sign(base) < 0:
            raise Undecided("a huge power of a negative base")
        log2 = 2.0 ** min(exponent.log2_lower, 1023.0) * lower_base
        return AtLeast(min(log2, LOG2_CAP), 1)
    if isinstance(base, AtLeast):
        if n is not None and n >= 1:
            sign = base.sign if n % 2 else 1
            return AtLeast(min(base.log2_lower * n, LOG2_CAP), sign)
        if base.sign == 1 and _sign(exponent) == 1:
            return AtLeast(min(base.log2_lower * float(_interval(exponent).a), LOG2_CAP), 1)
        raise Undecided("a huge base")
    if n is not None:  # an interval base, an integer exponent
        if _sign(base) == 0:
            return _interval(base) ** n if abs(n) < 64 else _undecided("a power of an interval around zero")
        sign = -1 if _sign(base) < 0 and n % 2 else 1
        return _from_log2(_log2_interval(base) * n, sign)
    if _sign(base) != 1:
        raise Undecided("a fractional power of a base not provably positive")
    return _from_log2(_log2_interval(base) * _interval(exponent), 1)


def _undecided(reason: str) -> Value:
    raise Undecided(reason)


def _log2_factorial_lower(n: float) -> float:
    """log2(n!) >= n log2(n / e), for n >= 1."""
    return n * (math.log2(n) - math.log2(math.e)) if n > 1 else 0.0


def _factorial(value: Value) -> Value:
    n = _integer(value)
    if n is not None:
        if n < 0:
            raise Undecided("factorial of a negative integer")
        if n <= EXACT_FACTORIAL:
            return _check_exact(Fraction(math.factorial(n)))
        return AtLeast(min(_log2_factorial_lower(n), LOG2_CAP), 1)
    if isinstance(value, AtLeast) and value.sign == 1:
        # x >= 2^L, so x! >= (x/e)^x: log2 >= 2^L (L - log2 e)
        log2 = 2.0 ** min(value.log2_lower, 1023.0) * (value.log2_lower - math.log2(math.e))
        if log2 <= 0:
            raise Undecided("factorial of a small huge number")
        return AtLeast(min(log2, LOG2_CAP), 1)
    raise Undecided("factorial of a non-integer")


def _binomial(n_value: Value, k_value: Value) -> Value:
    n, k = _integer(n_value), _integer(k_value)
    if n is None or k is None or n < 0 or k < 0:
        raise Undecided("binomial of non-integers")
    if k > n:
        return Fraction(0)
    if n <= EXACT_BINOMIAL:
        return _check_exact(Fraction(math.comb(n, k)))
    k = min(k, n - k)
    if k == 0:
        return Fraction(1)
    # C(n, k) >= (n/k)^k
    return _from_log2(iv.mpf(k) * (iv.log(iv.mpf(n) / k) / iv.log(2)), 1)


def _root(value: Value, degree: Value) -> Value:
    d = _integer(degree)
    if d is None or d < 2:
        raise Undecided("root of a non-integer degree")
    if isinstance(value, Fraction):
        if value < 0:
            raise Undecided("root of a negative number")
        exact = _exact_root(value.numerator, d), _exact_root(value.denominator, d)
        if exact[0] is not None and exact[1] is not None:
            return Fraction(exact[0], exact[1])
        if value == 0:
            return Fraction(0)
        return _from_log2(_log2_interval(value) / d, 1)
    if isinstance(value, AtLeast):
        if value.sign != 1:
            raise Undecided("root of a huge number of unknown sign")
        return AtLeast(value.log2_lower / d, 1)
    if _sign(value) != 1:
        raise Undecided("root of an interval not provably positive")
    return _from_log2(_log2_interval(value) / d, 1)


def _exact_root(n: int, d: int) -> int | None:
    if n.bit_length() > EXACT_BITS:
        return None
    if d == 2:
        r = math.isqrt(n)
        return r if r * r == n else None
    r = round(n ** (1.0 / d)) if n.bit_length() < 1000 else None
    if r is None:
        return None
    for candidate in (r - 1, r, r + 1):
        if candidate >= 0 and candidate**d == n:
            return candidate
    return None


def _function(name: str, value: Value) -> Value:
    x = _interval(value)
    if name == "ln":
        if _sign(value) != 1:
            raise Undecided("log of a number not provably positive")
        return iv.log(x)
    if name == "exp":
        if x.b > INTERVAL_LOG2 / 2:
            raise Undecided("exp of a large number")
        return iv.exp(x)
    if abs(x).b > 1e6:
        raise Undecided("trigonometry of a large argument")  # interval width blows up
    result = {"sin": iv.sin, "cos": iv.cos, "tan": iv.tan}[name](x)
    if not (math.isfinite(float(result.a)) and math.isfinite(float(result.b))):
        raise Undecided("tan at a pole")
    return result


def _big_number(digits: str, integer_digits: int) -> Value:
    """A literal too long to convert: its magnitude from the leading digits and the length."""
    lead = digits.lstrip("0")
    if not lead:
        return Fraction(0)
    exponent = integer_digits - (len(digits) - len(lead)) - 1  # value in [10^exponent, 10^(exponent+1))
    head = int(lead[:30])
    scale = exponent - (min(len(lead), 30) - 1)
    low = iv.log(iv.mpf(head)) / iv.log(2) + scale * iv.log(10) / iv.log(2)
    high = iv.log(iv.mpf(head + 1)) / iv.log(2) + scale * iv.log(10) / iv.log(2)
    return _from_log2(iv.mpf([low.a, high.b]), 1)


def evaluate(node: tuple[Any, ...], point: dict[str, Fraction]) -> Value:
    """The value of a parsed tree with symbols set to `point`. Raises Undecided where no sound bound is known."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "big":
        return _big_number(node[1], node[2])
    if kind == "sym":
        return point[node[1]]
    if kind == "pi":
        return iv.pi
    if kind == "e":
        return iv.e
    if kind == "neg":
        return _neg(evaluate(node[1], point))
    if kind == "add":
        total = evaluate(node[1][0], point)
        for term in node[1][1:]:
            total = _add(total, evaluate(term, point))
        return total
    if kind == "mul":
        product = evaluate(node[1][0][1], point)
        for is_division, factor in node[1][1:]:
            value = evaluate(factor, point)
            product = _div(product, value) if is_division else _mul(product, value)
        return product
    if kind == "div":
        return _div(evaluate(node[1], point), evaluate(node[2], point))
    if kind == "post":
        value = evaluate(node[1], point)
        for op in node[2]:
            value = _pow(value, evaluate(op[1], point)) if op[0] == "^" else _factorial(value)
        return value
    if kind == "root":
        return _root(evaluate(node[1], point), evaluate(node[2], point))
    if kind == "fn":
        return _function(node[1], evaluate(node[2], point))
    if kind == "binom":
        return _binomial(evaluate(node[1], point), evaluate(node[2], point))
    if kind == "series":
        return _series(node, point)
    raise Undecided(kind)


MAX_SERIES_TERMS = 2000


def _index_power(body: tuple[Any, ...], var: str) -> int | None:
    """p when the body is var or var^p (a positive integer literal), else None."""
    if body == ("sym", var):
        return 1
    if body[0] == "post" and body[1] == ("sym", var) and len(body[2]) == 1 and body[2][0][0] == "^":
        exponent = body[2][0][1]
        if exponent[0] == "num" and exponent[1].denominator == 1 and exponent[1] > 0:
            return int(exponent[1])
    return None


def _series(node: tuple[Any, ...], point: dict[str, Fraction]) -> Value:
    _, kind, var, low_node, high_node, body = node
    low, high = _integer(evaluate(low_node, point)), _integer(evaluate(high_node, point))
    if low is None or high is None:
        raise Undecided("series bounds")
    if high < low:
        return Fraction(0 if kind == "sum" else 1)
    if high - low < MAX_SERIES_TERMS:
        inner = dict(point)
        total: Value = Fraction(0 if kind == "sum" else 1)
        for k in range(low, high + 1):
            inner[var] = Fraction(k)
            term = evaluate(body, inner)
            total = _add(total, term) if kind == "sum" else _mul(total, term)
        return total
    power = _index_power(body, var)
    if power is not None and kind == "prod" and low <= 0 <= high:
        return Fraction(0)  # one factor is 0^p, every other one finite
    if power is None or low < 1:
        raise Undecided("a long series of anything but a power of its index")
    count = high - low + 1
    if kind == "sum":
        # high^p <= sum_{k=low}^{high} k^p <= count * high^p
        log2_high = iv.log(iv.mpf(high)) / iv.log(2) * power
        return _from_log2(iv.mpf([log2_high.a, (log2_high + iv.log(iv.mpf(count)) / iv.log(2)).b]), 1)
    # prod_{k=low}^{high} k^p >= (high! / (low-1)!)^p >= (high!)^p / low^(p low) crude: use the larger bound below
    lower = _log2_factorial_lower(high) if low == 1 else count * math.log2(low)
    return AtLeast(min(lower * power, LOG2_CAP), 1)


# ------------------------------------------------------------------------------------------ comparison


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
        return "different" if _finite_upper_log2(other) < big.log2_lower - 1 else "unknown"
    g, p = _interval(gold), _interval(predicted)
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
        return value != 0 and float(_log2_interval(value).a) > log2_bound
    low = abs(value).a
    return bool(low > 0 and float((iv.log(iv.mpf(low)) / iv.log(2)).a) > log2_bound)
