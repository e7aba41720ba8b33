from tunesmith.data.formats import CHAT, COMPLETION, PAIRS, parse_example


def test_chat_line_keeps_tools_names_and_weights():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    obj = {"messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "name": "bob"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}],
         "weight": 0},
        {"role": "tool", "tool_call_id": "1", "content": "r"},
        {"role": "assistant", "content": [{"type": "text", "text": "do"}, {"type": "text", "text": "ne"}]},
    ], "tools": tools}
    ex, problems = parse_example(obj, 3)
    assert problems == []
    assert ex.format == CHAT and ex.tools == tools and ex.line == 3
    assert ex.messages[1]["name"] == "bob"
    assert ex.messages[2]["weight"] == 0 and ex.messages[2]["tool_calls"][0]["function"]["name"] == "f"
    assert ex.messages[4] == {"role": "assistant", "content": "done", "weight": 1}


def test_pairs_and_completion_normalise():
    ex, _ = parse_example({"system": "s", "user": "u", "assistant": "a"}, 1)
    assert ex.format == PAIRS
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    ex, _ = parse_example({"prompt": "2+2=", "completion": " 4"}, 1)
    assert ex.format == COMPLETION and ex.prompt == "2+2=" and ex.completion == " 4"


def test_developer_role_is_a_system_message():
    ex, _ = parse_example({"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"},
                                        {"role": "assistant", "content": "a"}]}, 1)
    assert ex.has_system


def test_problems_name_line_and_field():
    _, problems = parse_example({"messages": [{"role": "user", "content": 5},
                                              {"role": "assistant", "content": "a", "weight": 2}]}, 7)
    assert {(p.line, p.field) for p in problems} == {(7, "messages[0].content"), (7, "messages[1].weight")}
