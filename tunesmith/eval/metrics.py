"""Scores of one generated answer against its reference answer, and their rates over a data set.

A score is True, False, or None where it does not apply: the JSON scores only count where the
reference is a JSON object or array (a rate of "valid JSON" means nothing for prose answers).
``contains`` and ``regex`` are scored only when asked for. A rate is taken over the items a score
applies to. A grader's score (``tunesmith.graders``, when one is given) is a number from 0 to 1, and
its "rate" is the mean of those numbers.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import re2

from tunesmith.errors import TunesmithError
from tunesmith.jsonvalues import parse_json, same_json

Scores = dict[str, bool | float | None]


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is the user's error, reported to them, not logged by RE2
    return options


_RE2_OPTIONS = _re2_options()


@dataclass(frozen=True)
class Checks:
    """Checks asked for by the user, beyond the fixed scores.

    The pattern is compiled by RE2, which matches in time linear in the answer's length: a pattern
    such as ``(a+)+$`` that makes Python's backtracking ``re`` run for minutes (holding the GIL, so
    a whole server stops) is answered in microseconds. RE2 has no backreferences or lookaround."""

    contains: str | None = None  # the answer holds this text (case-sensitive)
    regex: str | None = None  # the pattern is found somewhere in the answer (RE2 syntax)
    _pattern: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.regex is not None:
            try:
                object.__setattr__(self, "_pattern", re2.compile(self.regex, _RE2_OPTIONS))
            except re2.error as exc:
                reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
                raise TunesmithError(f"invalid regex {self.regex!r}: {reason} (RE2 syntax: no backreferences "
                                     "or lookaround)") from None

    def matches(self, answer: str) -> bool:
        return self._pattern.search(answer) is not None


@dataclass(frozen=True)
class Rate:
    hits: int | float  # a grader's scores add up to a fraction
    n: int  # items the score applies to

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.value, "hits": self.hits, "n": self.n}


def exact(answer: str, reference: str) -> bool:
    return answer == reference


def normalise(text: str) -> str:
    """Casefolded, runs of whitespace made one space, punctuation and spaces cut from both ends."""
    text = " ".join(text.casefold().split())
    start, end = 0, len(text)
    while start < end and _trimmed(text[start]):
        start += 1
    while end > start and _trimmed(text[end - 1]):
        end -= 1
    return text[start:end]


def _trimmed(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def normalised(answer: str, reference: str) -> bool:
    return normalise(answer) == normalise(reference)


def json_valid(answer: str) -> bool:
    return parse_json(answer)[0]


def json_equal(answer: str, reference: str) -> bool:
    (ok_a, a), (ok_r, r) = parse_json(answer), parse_json(reference)
    return ok_a and ok_r and same_json(a, r)


def score(answer: str, reference: str, checks: Checks = Checks()) -> Scores:
    ok, value = parse_json(reference)
    structured = ok and isinstance(value, dict | list)
    scores: Scores = {
        "exact_match": exact(answer, reference),
        "normalised_match": normalised(answer, reference),
        "json_valid": json_valid(answer) if structured else None,
        "json_equal": json_equal(answer, reference) if structured else None,
    }
    if checks.contains is not None:
        scores["contains"] = checks.contains in answer
    if checks.regex is not None:
        scores["regex"] = checks.matches(answer)
    return scores


def aggregate(items: list[Scores]) -> dict[str, Rate]:
    """The rate of every score, over the items it applies to (n = 0: it applied to none)."""
    names = dict.fromkeys(name for scores in items for name in scores)
    return {name: Rate(sum(s[name] for s in items if s.get(name) is not None),
                       sum(s.get(name) is not None for s in items)) for name in names}
