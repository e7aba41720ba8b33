"""Detect and normalise every accepted JSONL line shape into one ``Example`` type.

Accepted shapes (one per file):
- ``chat``:       {"messages": [...], "tools"?: [...]}   (OpenAI chat fine-tuning format)
- ``pairs``:      {"user": str, "assistant": str, "system"?: str}
- ``completion``: {"prompt": str, "completion": str}     (legacy OpenAI format)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHAT, PAIRS, COMPLETION = "chat", "pairs", "completion"

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based line in the file; None for whole-file problems
    field: str | None  # JSON path of the offending field, e.g. "messages[2].content"
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        if self.field:
            where += f", {self.field}"
        return f"{where}: {self.message}"


@dataclass
class Example:
    """One training example. Chat-like shapes become ``messages``; completions keep their text.

    In ``messages`` every assistant message carries an int ``weight`` (1 = trained).
    """

    line: int
    format: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    prompt: str | None = None
    completion: str | None = None

    @property
    def has_system(self) -> bool:
        return bool(self.messages) and self.messages[0]["role"] == "system"


def detect_format(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return CHAT
    if "prompt" in obj or "completion" in obj:
        return COMPLETION
    if "user" in obj or "assistant" in obj:
        return PAIRS
    return None


def parse_example(obj: Any, line: int) -> tuple[Example | None, list[Problem]]:
    """Normalise one decoded JSON line; return the example or the problems that prevent it."""
    if not isinstance(obj, dict):
        return None, [Problem(line, None, f"expected a JSON object, got {_type_name(obj)}")]
    fmt = detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(obj)) or "none"
        return None, [Problem(line, None, "unrecognised format: expected \"messages\", "
                              "\"user\"/\"assistant\" or \"prompt\"/\"completion\" "
                              f"(keys found: {keys})")]
    parser = {CHAT: _parse_chat, PAIRS: _parse_pairs, COMPLETION: _parse_completion}[fmt]
    return parser(obj, line)


def _parse_chat(obj: dict[str, Any], line: int) -> tuple[Example | None, list[Problem]]:
    problems: list[Problem] = []
    raw = obj["messages"]
    if not isinstance(raw, list):
        return None, [Problem(line, "messages", f"must be a list, got {_type_name(raw)}")]
    if not raw:
        return None, [Problem(line, "messages", "is empty")]
    messages = []
    for i, msg in enumerate(raw):
        parsed, errs = _parse_message(msg, line, f"messages[{i}]")
        problems += errs
        if parsed is not None:
            messages.append(parsed)
    tools = obj.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        problems.append(Problem(line, "tools", "must be a list of objects"))
    if problems:
        return None, problems
    if not any(m["role"] == "assistant" and m["weight"] for m in messages):
        return None, [Problem(line, "messages", "no assistant message to train on "
                              "(none present, or all have weight 0)")]
    return Example(line, CHAT, messages=messages, tools=tools or None), []


def _parse_message(msg: Any, line: int, path: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    if not isinstance(msg, dict):
        return None, [Problem(line, path, f"expected an object, got {_type_name(msg)}")]
    problems = [Problem(line, f"{path}.{k}", "unrecognised key") for k in msg if k not in MESSAGE_KEYS]
    role = msg.get("role")
    if role is None:
        return None, problems + [Problem(line, f"{path}.role", "missing")]
    if role not in ROLES:
        return None, problems + [Problem(line, f"{path}.role", f"unknown role {role!r} "
                                         f"(expected one of {', '.join(ROLES)})")]
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}

    tool_calls = msg.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            problems.append(Problem(line, f"{path}.tool_calls", "only assistant messages may carry tool calls"))
        elif not isinstance(tool_calls, list) or not all(isinstance(c, dict) for c in tool_calls):
            problems.append(Problem(line, f"{path}.tool_calls", "must be a list of objects"))
        else:
            out["tool_calls"] = tool_calls

    if "content" not in msg or msg["content"] is None:
        if not (role == "assistant" and tool_calls):
            problems.append(Problem(line, f"{path}.content", "missing"))
        out["content"] = ""
    else:
        content = _content_text(msg["content"])
        if content is None:
            problems.append(Problem(line, f"{path}.content", "must be a string (or a list of text parts), "
                                    f"got {_type_name(msg['content'])}"))
        elif role == "assistant" and not content.strip() and not tool_calls:
            problems.append(Problem(line, f"{path}.content", "is empty"))
        out["content"] = content or ""

    for key in ("name", "tool_call_id"):
        if key in msg:
            if isinstance(msg[key], str):
                out[key] = msg[key]
            else:
                problems.append(Problem(line, f"{path}.{key}", "must be a string"))

    if role == "assistant":
        weight = msg.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            problems.append(Problem(line, f"{path}.weight", f"must be 0 or 1, got {weight!r}"))
        out["weight"] = int(weight) if weight in (0, 1) else 1
    elif "weight" in msg:
        problems.append(Problem(line, f"{path}.weight", "only assistant messages may carry a weight"))
    return out, problems


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _parse_pairs(obj: dict[str, Any], line: int) -> tuple[Example | None, list[Problem]]:
    problems = _check_strings(obj, line, required=("user", "assistant"), optional=("system",),
                              allowed=("user", "assistant", "system"))
    if problems:
        return None, problems
    messages = [{"role": "system", "content": obj["system"]}] if obj.get("system") else []
    messages += [{"role": "user", "content": obj["user"]},
                 {"role": "assistant", "content": obj["assistant"], "weight": 1}]
    return Example(line, PAIRS, messages=messages), []


def _parse_completion(obj: dict[str, Any], line: int) -> tuple[Example | None, list[Problem]]:
    problems = _check_strings(obj, line, required=("prompt", "completion"), optional=(),
                              allowed=("prompt", "completion"))
    if problems:
        return None, problems
    return Example(line, COMPLETION, prompt=obj["prompt"], completion=obj["completion"]), []


def _check_strings(obj, line, required, optional, allowed) -> list[Problem]:
    problems = [Problem(line, k, "unrecognised key") for k in obj if k not in allowed]
    for key in required + optional:
        if key not in obj:
            if key in required:
                problems.append(Problem(line, key, "missing"))
        elif not isinstance(obj[key], str):
            problems.append(Problem(line, key, f"must be a string, got {_type_name(obj[key])}"))
        elif key in required and key != "prompt" and not obj[key].strip():
            problems.append(Problem(line, key, "is empty"))
    return problems


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
