"""A safe arithmetic evaluator for the `calculator` tool.

The expression is parsed with `ast` and only numbers, + - * / // % ** and parentheses are evaluated by walking
the tree: no `eval`, no names, no calls, no attributes. Length, depth, exponents and magnitudes are bounded,
so no input can make it run long or build huge numbers.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_CHARS = 200
MAX_NODES = 100
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression is not plain, bounded arithmetic."""


def _normalize(expression: str) -> str:
    """Accept the ways people and models write arithmetic: 1,000  $5  15%  2^3  3×4  8÷2  "3 + 4 = 7"."""
    text = (
        expression.split("=")[0]
        .strip()
        .replace("×", "*")
        .replace("÷", "/")
        .replace("^", "**")
        .replace("$", "")
    )
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d.(])", r"(\1/100)", text)  # 15% but not 17 % 5


def _check(value: object) -> int | float:
    if not isinstance(value, int | float):  # e.g. (-8) ** 0.5 is complex
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("the result is too large")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponents are limited to {MAX_EXPONENT}")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    raise CalculatorError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; raises CalculatorError for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("give an arithmetic expression, like 12*(3+4)")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(_normalize(expression), mode="eval")
    except (SyntaxError, ValueError):
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError("the expression is too long")
    value = _eval(tree)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return round(value, 10) if isinstance(value, float) else value
