"""A safe arithmetic evaluator: the calculator tool the math agent calls.

``calculate("(12 + 30) * 3 / 4")`` returns ``"31.5"``. The expression is parsed with :mod:`ast` and only
this grammar is evaluated, with exact rational arithmetic (:class:`fractions.Fraction`), never ``eval``::

    expr := number | expr op expr | ("+" | "-") expr | "(" expr ")"
    op   := "+" | "-" | "*" | "/" | "//" | "%" | "**"
    number := decimal literal (``12``, ``0.5``, ``1_000``); thousands commas (``1,234``) are accepted

``^`` is read as a power and ``×``/``÷`` as ``*``/``/``, since models write them.

Anything else (names, calls, attributes, strings, comparisons, subscripts, lambdas...) is refused with
:class:`CalculatorError` naming the offending part. Sizes are bounded so a tool call cannot hang the
agent: the expression is at most :data:`MAX_LENGTH` characters, an exponent must be an integer with
:math:`|e| \\le` :data:`MAX_EXPONENT`, and every intermediate result has at most :data:`MAX_DIGITS` digits
in its numerator and denominator.

Results are exact when they can be: an integer prints as ``42``; a fraction whose decimal expansion ends
prints in full (``31.5``, ``0.125``); any other fraction prints rounded to 10 significant digits
(``2/3`` → ``0.6666666667``).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from decimal import Context, Decimal
from fractions import Fraction

MAX_LENGTH = 300
MAX_EXPONENT = 100
MAX_DIGITS = 300

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, is too large, or divides by zero; the message says which."""


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic ``expression`` (grammar in the module docstring)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    text = _THOUSANDS.sub("", expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**"))
    if not text:
        raise CalculatorError("the expression is empty; write arithmetic such as '(12 + 30) * 3'")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"the expression has {len(text)} characters; the limit is {MAX_LENGTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(
            f"{expression!r} is not an arithmetic expression; use numbers, + - * / // % ** and ( )"
        ) from None
    return _eval(tree.body)


def calculate(expression: str) -> str:
    """The value of ``expression`` as text: exact when it can be, else 10 significant digits."""
    return format_number(evaluate(expression))


def format_number(value: Fraction) -> str:
    """``42``, ``31.5``, or ``0.6666666667`` (see the module docstring)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:  # a terminating decimal: print it in full
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return _plain(Context(prec=MAX_DIGITS * 2).plus(exact))
    return _plain(Context(prec=10).divide(Decimal(value.numerator), Decimal(value.denominator)))


def _plain(d: Decimal) -> str:
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _check_size(value: Fraction) -> Fraction:
    if len(str(abs(value.numerator))) > MAX_DIGITS or len(str(value.denominator)) > MAX_DIGITS:
        raise CalculatorError(f"an intermediate result has more than {MAX_DIGITS} digits")
    return value


def _eval(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"{node.value!r} is not a number")
        return _check_size(Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _SYMBOLS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise CalculatorError(f"division by zero in {ast.unparse(node)!r}")
        return _check_size(_BINARY[type(node.op)](left, right))
    raise CalculatorError(f"{ast.unparse(node)!r} is not allowed: only numbers, + - * / // % ** and parentheses are")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    """:math:`b^e` for an integer :math:`|e| \\le` MAX_EXPONENT (and :math:`b \\ne 0` when :math:`e < 0`)."""
    if exponent.denominator != 1:
        raise CalculatorError(
            f"the exponent {format_number(exponent)} is not an integer; only integer powers are supported"
        )
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"the exponent {exponent} is too large (at most {MAX_EXPONENT} in absolute value)")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero: 0 to a negative power")
    # the result has about |e| times the digits of the base: refuse before computing it
    digits = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if (digits - 1) * abs(int(exponent)) > MAX_DIGITS:
        raise CalculatorError(f"an intermediate result has more than {MAX_DIGITS} digits")
    return _check_size(base ** int(exponent))
