"""The fast path's parser: LaTeX as math-verify sees it (after its normalisation) -> a small tree, for the subset
`rlx_math.fastpath` decides (numbers, one-letter symbols, + - * / ^ !, \\frac, \\sqrt, \\binom, \\pi, e, a few
functions, sums and products of the index). Anything else raises `Undecided`: sympy decides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

MAX_TOKENS = 20_000
MAX_DEPTH = 100  # nesting of groups (a \frac level counts 2); the parser recurses about 3 frames per count


class Undecided(Exception):
    """The expression is outside what this module decides soundly; sympy must decide."""


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

