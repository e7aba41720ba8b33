"""Detect and normalise every accepted JSONL line shape into one ``Example`` type.

Accepted shapes (one per file):
- ``chat``:       {"messages": [...], "tools"?: [...]}   (OpenAI chat fine-tuning format)
- ``pairs``:      {"user": str, "assistant": str, "system"?: str}
- ``completion``: {"prompt": str, "completion": str}     (legacy OpenAI format)
- ``preference``: {"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output": [assistant]}
                  (OpenAI's DPO format; older docs say ``preferred_completion``/``non_preferred_completion``)
                  or {"prompt": str | [...], "chosen": str | [assistant], "rejected": str | [assistant]} (TRL's)
- ``prompts``:    {"messages": [... ending in a user turn], "tools"?: [...], any other keys}  (OpenAI's
                  reinforcement fine-tuning format: no answer to copy; the whole line is the grader's ``item``).
                  Only read as such for a reinforcement job (``parse_prompt``): the line shape is a chat line's.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from typing import Any

CHAT, PAIRS, COMPLETION, PREFERENCE, PROMPTS = "chat", "pairs", "completion", "preference", "prompts"

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
# The two sides of a preference line, as (preferred, non-preferred): each with its accepted names.
OPENAI_SIDES = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))
TRL_KEYS = ("prompt", "chosen", "rejected")


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

    In ``messages`` every assistant message carries an int ``weight`` (1 = trained). A preference
    example is the conversation that ends in the preferred answer (the only trained turn) plus
    ``rejected``, the non-preferred answer to the same prompt.
    """

    line: int
    format: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    prompt: str | None = None
    completion: str | None = None
    rejected: dict[str, Any] | None = None
    item: dict[str, Any] | None = None  # a prompt line as a whole: what a grader's {{ item.… }} reads

    @property
    def has_system(self) -> bool:
        return bool(self.messages) and self.messages[0]["role"] == "system"

    @property
    def content_key(self) -> str:
        """Equal for two examples that train the same thing, whatever their line's shape or key order."""
        return json.dumps([self.messages, self.tools, self.prompt, self.completion, self.rejected, self.item],
                          sort_keys=True)


def detect_format(obj: dict[str, Any]) -> str | None:
    # Before "prompt": TRL's preference lines have one too.
    if {"input", "chosen", "rejected"} & obj.keys() or any(k in obj for side in OPENAI_SIDES for k in side):
        return PREFERENCE
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
                              "\"user\"/\"assistant\", \"prompt\"/\"completion\", "
                              "\"input\"/\"preferred_output\"/\"non_preferred_output\" or "
                              f"\"prompt\"/\"chosen\"/\"rejected\" (keys found: {keys})")]
    parser = {CHAT: _parse_chat, PAIRS: _parse_pairs, COMPLETION: _parse_completion,
              PREFERENCE: _parse_preference}[fmt]
    return parser(obj, line)


def parse_prompt(obj: Any, line: int) -> tuple[Example | None, list[Problem]]:
    """One line of a reinforcement fine-tuning file: the conversation so far, which the model answers
    while training (earlier assistant turns are context), plus the line's other fields for the grader."""
    if not isinstance(obj, dict):
        return None, [Problem(line, None, f"expected a JSON object, got {_type_name(obj)}")]
    if "messages" not in obj:
        return None, [Problem(line, "messages", "missing: a reinforcement fine-tuning line holds the conversation "
                              "the model answers, as \"messages\" (the grader reads the line's other fields)")]
    messages, problems = _parse_messages(obj["messages"], line, "messages")
    problems += _parse_tools(obj.get("tools"), line, "tools")
    if messages and messages[-1]["role"] == "assistant":
        problems.append(Problem(line, f"messages[{len(messages) - 1}].role", "the last message is the assistant's: "
                                "a reinforcement fine-tuning line ends where the model answers (a user turn)"))
    if problems:
        return None, problems
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in messages]
    return Example(line, PROMPTS, messages=context, tools=obj.get("tools") or None, item=obj), []


def _parse_messages(raw: Any, line: int, path: str) -> tuple[list[dict[str, Any]], list[Problem]]:
    if not isinstance(raw, list):
        return [], [Problem(line, path, f"must be a list, got {_type_name(raw)}")]
    if not raw:
        return [], [Problem(line, path, "is empty")]
    messages, problems = [], []
    for i, msg in enumerate(raw):
        parsed, errs = _parse_message(msg, line, f"{path}[{i}]")
        problems += errs
        if parsed is not None:
            messages.append(parsed)
    return messages, problems


def _parse_tools(tools: Any, line: int, path: str) -> list[Problem]:
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        return [Problem(line, path, "must be a list of objects")]
    return []


def _parse_chat(obj: dict[str, Any], line: int) -> tuple[Example | None, list[Problem]]:
    messages, problems = _parse_messages(obj["messages"], line, "messages")
    tools = obj.get("tools")
    problems += _parse_tools(tools, line, "tools")
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


def _parse_preference(obj: dict[str, Any], line: int) -> tuple[Example | None, list[Problem]]:
    """An OpenAI or TRL preference line → the conversation ending in the preferred answer, plus the other."""
    trl = any(k in obj for k in TRL_KEYS)
    allowed = TRL_KEYS if trl else ("input", *OPENAI_SIDES[0], *OPENAI_SIDES[1])
    problems = [Problem(line, k, "unrecognised key") for k in obj if k not in allowed]
    if trl:
        prompt, tools, prompt_path = _trl_prompt(obj, line, problems), None, "prompt"
        sides = [_side_key(obj, (name,), line, problems) for name in ("chosen", "rejected")]
    else:
        prompt, tools, prompt_path = *_openai_input(obj, line, problems), "input.messages"
        sides = [_side_key(obj, names, line, problems) for names in OPENAI_SIDES]
    chosen, rejected = (_parse_answer(obj[key], line, key, problems) if key else None for key in sides)
    if prompt and prompt[-1]["role"] == "assistant":
        problems.append(Problem(line, prompt_path, "ends with an assistant message: the preferred and "
                                "non-preferred outputs must be the last assistant turn"))
    if chosen and rejected and (chosen["content"], chosen.get("tool_calls")) == \
            (rejected["content"], rejected.get("tool_calls")):
        problems.append(Problem(line, sides[1], "is identical to the preferred output: a pair needs two "
                                "different answers"))
    if problems:
        return None, problems
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]  # earlier turns: context
    return Example(line, PREFERENCE, messages=context + [chosen], tools=tools, rejected=rejected), []


def _trl_prompt(obj: dict[str, Any], line: int, problems: list[Problem]) -> list[dict[str, Any]]:
    raw = obj.get("prompt")
    if raw is None:
        problems.append(Problem(line, "prompt", "missing"))
        return []
    if isinstance(raw, str):  # a plain prompt is the user's message
        if not raw.strip():
            problems.append(Problem(line, "prompt", "is empty"))
        return [{"role": "user", "content": raw}]
    messages, errs = _parse_messages(raw, line, "prompt")
    problems += errs
    return messages


def _openai_input(obj: dict[str, Any], line: int,
                  problems: list[Problem]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    raw = obj.get("input")
    if not isinstance(raw, dict) or "messages" not in raw:
        problems.append(Problem(line, "input", "missing" if raw is None else "must be an object with \"messages\""))
        return [], None
    messages, errs = _parse_messages(raw["messages"], line, "input.messages")
    problems += errs + _parse_tools(raw.get("tools"), line, "input.tools")
    return messages, raw.get("tools") or None


def _side_key(obj: dict[str, Any], names: tuple[str, ...], line: int, problems: list[Problem]) -> str | None:
    """The key a side of the pair is given under (of its accepted names)."""
    given = [n for n in names if n in obj]
    if not given:
        problems.append(Problem(line, names[0], "missing"))
    elif len(given) > 1:
        problems.append(Problem(line, given[1], f"give either {given[0]} or {given[1]}, not both"))
    return given[0] if given else None


def _parse_answer(raw: Any, line: int, path: str, problems: list[Problem]) -> dict[str, Any] | None:
    """One side of a pair: one assistant message (a string is its content)."""
    if isinstance(raw, str):
        if not raw.strip():
            problems.append(Problem(line, path, "is empty"))
        return {"role": "assistant", "content": raw, "weight": 1}
    if not (isinstance(raw, list) and len(raw) == 1):
        problems.append(Problem(line, path, "must be a list holding one assistant message (or a string), got "
                                + (f"{len(raw)} messages" if isinstance(raw, list) else _type_name(raw))))
        return None
    message, errs = _parse_message(raw[0], line, f"{path}[0]")
    problems += errs
    if message is None:
        return None
    if message["role"] != "assistant":
        problems.append(Problem(line, f"{path}[0].role", f"must be \"assistant\", got {message['role']!r}"))
    elif not message["weight"]:
        problems.append(Problem(line, f"{path}[0].weight", "must be 1: both answers of a pair are trained"))
    return message


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
