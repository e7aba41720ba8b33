"""OpenAI's grader template strings: ``{{ item.field }}``, ``{{ item.a.b }}``, ``{{ sample.output_text }}``,
``{{ sample.output_json.field }}``.

Substituted by a regular expression, never executed as Jinja2: a template comes from a client, and
the only thing it may do is name a value of the item or the sample.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunesmith.jsonvalues import parse_json

# Every ``{{ ... }}``; no braces inside, so a run of unmatched ``{{`` is scanned once, not once per brace.
_REFERENCE = re.compile(r"\{\{([^{}]*)\}\}")
# What one may hold: a namespace and a dotted path of keys (or list indices).
_PATH = re.compile(r"(item|sample)((?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+))+)")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")  # make_sample's keys


class RenderError(Exception):
    """A sample's template names a value its item or sample lacks. ``error_type`` is the flag of
    OpenAI's run response that it sets."""

    def __init__(self, message: str, error_type: str):
        super().__init__(message)
        self.error_type = error_type


def _references(text: str) -> list[tuple[str, list[str]]]:
    """(namespace, path) of every reference in ``text``; ValueError names the first that is neither."""
    refs = []
    for match in _REFERENCE.finditer(text):
        inner = match.group(1).strip()
        path = _PATH.fullmatch(inner)
        if not path:
            raise ValueError(f"unknown template variable {match.group(0)!r}: use {{{{ item.<field> }}}} or "
                             f"{{{{ sample.<{'|'.join(SAMPLE_FIELDS)}> }}}}")
        namespace, keys = path.group(1), path.group(2)[1:].split(".")
        if namespace == "sample" and keys[0] not in SAMPLE_FIELDS:
            raise ValueError(f"the sample has no field {keys[0]!r}: it has {', '.join(SAMPLE_FIELDS)}")
        refs.append((namespace, keys))
    return refs


def check_template(text: str) -> None:
    """Raises ValueError if ``text`` holds a ``{{ ... }}`` that is not a reference to the item or sample."""
    _references(text)


def template_fields(text: str) -> set[str]:
    """The top-level ``item.<field>`` names that ``text`` references (what a data set must provide)."""
    return {keys[0] for namespace, keys in _references(text) if namespace == "item"}


def _lookup(value: Any, keys: list[str]) -> tuple[bool, Any]:
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return True, value


def render(text: str, sample: dict, item: dict) -> str:
    """``text`` with every reference replaced by its value: strings as they are, anything else as JSON.
    A value that is not there raises RenderError (that sample's grade is an error, not an empty string
    compared as if the data had it)."""
    def value(reference: re.Match) -> str:
        match = _PATH.fullmatch(reference.group(1).strip())
        if not match:  # parse_grader refuses such a template; kept as text if one comes another way
            return reference.group(0)
        namespace, keys = match.group(1), match.group(2)[1:].split(".")
        found, value = _lookup(item if namespace == "item" else sample, keys)
        if not found:
            dotted = ".".join(keys)
            if namespace == "item":
                raise RenderError(f"item has no field {dotted!r}", "invalid_variable_error")
            raise RenderError(f"sample has no field {dotted!r}" + (" (the sample is not JSON)" if keys[0] ==
                              "output_json" and sample.get("output_json") is None else ""), "sample_parse_error")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _REFERENCE.sub(value, text)


def make_sample(text: str) -> dict:
    """OpenAI's ``sample`` namespace for a model's answer: its text, the text parsed as JSON (None
    where it is not JSON), and its tool calls (none: answers here are text)."""
    ok, value = parse_json(text)
    return {"output_text": text, "output_json": value if ok else None, "output_tools": []}
