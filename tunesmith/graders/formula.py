"""A multi grader's ``calculate_output``: arithmetic over its sub-graders' scores, by their names.

What OpenAI documents, and nothing else: numbers, the sub-graders' names, ``+ - * /``, ``^`` as power,
and the functions min, max, abs, floor, ceil, exp, sqrt and log. The formula comes from a client, so it
is parsed with ``ast`` and every node checked before it is compiled; it is never handed to eval as text.
Everything is computed in floats: a huge power overflows at once instead of growing an integer for
minutes (``9^9^9^9``).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable


def _least(*values: float) -> float:
    return min(values)


def _most(*values: float) -> float:
    return max(values)


# name → (function, fewest arguments, most arguments); floor and ceil give floats (see the docstring)
FUNCTIONS = {
    "min": (_least, 1, 64), "max": (_most, 1, 64), "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1), "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "exp": (math.exp, 1, 1), "sqrt": (math.sqrt, 1, 1), "log": (math.log, 1, 2),
}
MAX_NESTING = 100  # levels of operations; the walks here and Python's compiler recurse per level
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.UAdd, ast.USub)


class FormulaError(ValueError):
    pass


class Formula:
    """Checked and compiled once; evaluated once per sample."""

    def __init__(self, text: str, names: Iterable[str]):
        self.text, self.names = text, frozenset(names)
        try:
            tree = ast.parse(text.replace("^", "**"), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # ValueError: a null byte
            reason = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
            raise FormulaError(f"not a formula: {reason}") from None
        if _depth(tree) > MAX_NESTING:
            raise FormulaError(f"the formula nests more than {MAX_NESTING} operations deep")
        callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            self._check(node, callees)
        self._code = compile(tree, "<calculate_output>", "eval")
        self._scope = {"__builtins__": {}, **{name: f for name, (f, _, _) in FUNCTIONS.items()}}

    def _check(self, node: ast.AST, callees: set[int]) -> None:
        if isinstance(node, ast.Expression | ast.Load) or isinstance(node, _OPERATORS):
            return
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            if not isinstance(node.op, _OPERATORS):
                raise FormulaError(f"the formula may not use {type(node.op).__name__}: only + - * / ^")
            return
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise FormulaError(f"the formula may hold only numbers, not {node.value!r}")
            try:
                node.value = float(node.value)
            except OverflowError:
                node.value = math.inf
            if not math.isfinite(node.value):
                raise FormulaError("the formula holds a number too large for a float")
            return
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS and id(node) not in callees:
                raise FormulaError(f"the formula uses the function {node.id!r} without calling it")
            if node.id not in self.names and node.id not in FUNCTIONS:
                raise FormulaError(f"the formula names {node.id!r}, which is not one of the graders "
                                   f"({', '.join(sorted(self.names))})")
            return
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in FUNCTIONS:
                raise FormulaError(f"the formula may call only {', '.join(FUNCTIONS)}")
            _, fewest, most = FUNCTIONS[name]
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args) \
                    or not fewest <= len(node.args) <= most:
                raise FormulaError(f"the formula calls {name} with the wrong arguments")
            return
        raise FormulaError(f"the formula may not hold {type(node).__name__}: only numbers, grader names, "
                           "+ - * / ^ and the functions " + ", ".join(FUNCTIONS))

    def evaluate(self, scores: dict[str, float]) -> float:
        """The formula's value; ArithmeticError or ValueError (division by zero, log of 0, overflow,
        a result that is not a finite real number) for the caller to report as that sample's error."""
        try:
            value = eval(self._code, self._scope, {name: float(scores[name]) for name in self.names})  # noqa: S307
        except TypeError as exc:  # a complex power, (-1) ^ 0.5, fed to a function
            raise ValueError(str(exc)) from None
        if not isinstance(value, float) or not math.isfinite(value):
            raise ValueError(f"the formula's value {value!r} is not a finite number")
        return value


def _depth(tree: ast.AST) -> int:
    """How deep ``tree`` nests, found without recursion (a formula of 1000 minus signs nests 1000 deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest
