"""JSON values as a program reading a model's answer sees them: strict parsing and exact equality.

Shared by the evaluation's answer scores (``eval/metrics.py``) and the scores of greedy answers
during training (``train/answers.py``), which may not import the evaluation package.
"""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) if ``text`` is one JSON value, else (False, None).

    Stricter than ``json.loads``, which also takes NaN and Infinity: a program reading the answer
    as JSON would reject those."""
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError is a ValueError
        return False, None


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: objects ignore key order, arrays keep theirs; unlike Python's ``==``,
    true is not 1 and false is not 0 (an integer field answered as a boolean is wrong)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_json, a, b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b  # 1 and 1.0 are the same JSON number
    return type(a) is type(b) and a == b
