"""The fast path's values: a parsed tree evaluated at a point, exactly (`Fraction`) where the numbers stay small, as
mpmath intervals where they do not, and as `AtLeast` lower bounds for numbers too large to write down
(9^{9^{9^9}}). Every operation is sound: an interval always holds the true value, a bound is always below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mpmath import iv

from rlx_math.fastpath.parsing import Undecided

EXACT_BITS = 20_000  # larger exact numbers become intervals
INTERVAL_LOG2 = 2.0**24  # |x| above 2^(2^24) (5 million digits): only a lower bound is kept
LOG2_CAP = 1e300  # lower bounds beyond 2^(10^300) are capped (still sound: a lower bound)
EXACT_FACTORIAL = 3000
EXACT_BINOMIAL = 5000


@dataclass(frozen=True)
class AtLeast:
    """A real number with |x| >= 2^log2_lower; sign +1/-1, or 0 if unknown."""

    log2_lower: float
    sign: int = 0


Value = Fraction | Any | AtLeast  # Any: an mpmath interval (iv.mpf)


def log2_interval(value: Value) -> Any:
    """log2|value| as an interval (value must be nonzero and finite)."""
    if isinstance(value, Fraction):
        if value == 0:
            raise Undecided("log of zero")
        magnitude = abs(value)
        # exact bit lengths keep this cheap for 20,000-bit numbers
        shift = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
        scaled = magnitude / Fraction(2) ** shift if shift >= 0 else magnitude * Fraction(2) ** -shift
        return iv.log(interval(scaled)) / iv.log(2) + shift
    lower, upper = abs(value).a, abs(value).b
    if lower <= 0:
        raise Undecided("interval contains zero")
    return iv.log(iv.mpf([lower, upper])) / iv.log(2)


def interval(value: Value) -> Any:
    if isinstance(value, AtLeast):
        raise Undecided("no finite interval")
    if isinstance(value, Fraction):
        return iv.mpf(value.numerator) / iv.mpf(value.denominator)
    return value


def _check_exact(value: Fraction) -> Value:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > EXACT_BITS:
        return interval(value)
    return value


def finite_upper_log2(value: Value) -> float:
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
        if finite_upper_log2(small) > big.log2_lower - 2:
            raise Undecided("sum of comparable magnitudes")
        return AtLeast(big.log2_lower - 1, big.sign)  # |big + small| >= |big| - |big|/2
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return _check_exact(a + b)
    return interval(a) + interval(b)


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
        lower = sum(x.log2_lower if isinstance(x, AtLeast) else float(log2_interval(x).a) for x in (a, b))
        return AtLeast(min(lower, LOG2_CAP), _sign(a) * _sign(b))
    return interval(a) * interval(b)


def _div(a: Value, b: Value) -> Value:
    if isinstance(b, Fraction) and b == 0:
        raise Undecided("division by zero")
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return _check_exact(a / b)
    if isinstance(b, AtLeast):
        raise Undecided("divided by a huge number")
    if isinstance(a, AtLeast):
        return AtLeast(a.log2_lower - finite_upper_log2(b), a.sign * _sign(b))
    denominator = interval(b)
    if denominator.a <= 0 <= denominator.b:
        raise Undecided("division by an interval around zero")
    return interval(a) / denominator


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
        return _from_log2(log2_interval(base) * n, sign)
    if isinstance(exponent, AtLeast):
        if exponent.sign != 1:
            raise Undecided("a huge exponent of unknown sign")
        if isinstance(base, AtLeast):
            lower_base = base.log2_lower
        else:
            lower_base = float(log2_interval(base).a)
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
            return AtLeast(min(base.log2_lower * float(interval(exponent).a), LOG2_CAP), 1)
        raise Undecided("a huge base")
    if n is not None:  # an interval base, an integer exponent
        if _sign(base) == 0:
            return interval(base) ** n if abs(n) < 64 else _undecided("a power of an interval around zero")
        sign = -1 if _sign(base) < 0 and n % 2 else 1
        return _from_log2(log2_interval(base) * n, sign)
    if _sign(base) != 1:
        raise Undecided("a fractional power of a base not provably positive")
    return _from_log2(log2_interval(base) * interval(exponent), 1)


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
        return _from_log2(log2_interval(value) / d, 1)
    if isinstance(value, AtLeast):
        if value.sign != 1:
            raise Undecided("root of a huge number of unknown sign")
        return AtLeast(value.log2_lower / d, 1)
    if _sign(value) != 1:
        raise Undecided("root of an interval not provably positive")
    return _from_log2(log2_interval(value) / d, 1)


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
    x = interval(value)
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
