"""`tunesmith validate` on broken files: every error kind names its line, field and reason."""

import json

import pytest
from typer.testing import CliRunner

from conftest import chat_row, write_jsonl
from tunesmith.cli import app

GOOD = [json.dumps(chat_row(f"question {i}", f"answer {i}")) for i in range(10)]


def msgs(*messages):
    return json.dumps({"messages": list(messages)})


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}

CASES = {
    "invalid JSON": (GOOD[:3] + ['{"messages": [']+ GOOD[3:], "line 4: invalid JSON"),
    "not an object": (GOOD[:1] + ["[1, 2]"] + GOOD[1:], "line 2: expected a JSON object, got a list"),
    "unknown shape": (GOOD + ['{"text": "hi"}'], "line 11: unrecognised format"),
    "messages not a list": (GOOD[:5] + ['{"messages": "hi"}'] + GOOD[5:], "line 6, messages: must be a list"),
    "empty messages": (['{"messages": []}'] + GOOD, "line 1, messages: is empty"),
    "message not an object": (GOOD + [msgs("hi", A)], "line 11, messages[0]: expected an object"),
    "unknown role": (GOOD + [msgs({"role": "bot", "content": "x"}, A)], "line 11, messages[0].role: unknown role 'bot'"),
    "missing role": (GOOD + [msgs({"content": "x"}, A)], "line 11, messages[0].role: missing"),
    "missing content": (GOOD[:2] + [msgs({"role": "user"}, A)] + GOOD[2:], "line 3, messages[0].content: missing"),
    "non-string content": (GOOD + [msgs({"role": "user", "content": 42}, A)],
                           "line 11, messages[0].content: must be a string"),
    "empty assistant content": (GOOD + [msgs(U, {"role": "assistant", "content": " "})],
                                "line 11, messages[1].content: is empty"),
    "unrecognised message key": (GOOD + [msgs({**U, "mood": "happy"}, A)], "line 11, messages[0].mood: unrecognised key"),
    "no assistant message": (GOOD + [msgs(U)], "line 11, messages: no assistant message to train on"),
    "all weights zero": (GOOD + [msgs(U, {**A, "weight": 0})], "line 11, messages: no assistant message to train on"),
    "bad weight": (GOOD + [msgs(U, {**A, "weight": 0.5})], "line 11, messages[1].weight: must be 0 or 1"),
    "mixed formats": (GOOD + ['{"user": "u", "assistant": "a"}'], "mixed formats in one file"),
    "pair without assistant": ([json.dumps({"user": f"u{i}", "assistant": "a"}) for i in range(10)]
                               + ['{"user": "u"}'], "line 11, assistant: missing"),
    "completion not a string": ([json.dumps({"prompt": f"p{i}", "completion": "c"}) for i in range(10)]
                                + ['{"prompt": "p", "completion": 3}'], "line 11, completion: must be a string"),
    "assistant speaks first": (GOOD + [msgs(A, U, A)], "line 11, messages: the conversation starts with an assistant"),
    "fewer than 10 examples": (GOOD[:3], "only 3 valid examples; at least 10 are required"),
    "empty file": ([], "the file is empty"),
}


@pytest.mark.parametrize("case", CASES)
def test_broken_file_reports_line_and_reason(case, tmp_path, smol_info):
    lines, expected = CASES[case]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert expected in result.output


def test_non_utf8_line(tmp_path, smol_info):
    path = tmp_path / "data.jsonl"
    path.write_bytes("\n".join(GOOD[:2]).encode() + b'\n{"messages": "caf\xe9"}\n' + "\n".join(GOOD[2:]).encode())
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "line 3: not valid UTF-8" in result.output


def test_warnings_statistics_and_hyperparameters(tmp_path, smol_info):
    rows = GOOD + [GOOD[0]] + [json.dumps(chat_row("no system", "ok", system=None))]
    rows.append(json.dumps(chat_row("long " * 300, "fine")))
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    result = CliRunner().invoke(app, ["validate", str(path), "--max-length", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    warnings = {(w["line"], w["message"].split(":")[0]) for w in report["warnings"]}
    assert (11, "exact duplicate of line 1") in warnings
    assert (13, "longer than max length 64 tokens") in warnings
    assert any("no system message (lines 12)" in w["message"] for w in report["warnings"])
    assert report["examples"] == 12  # line 13 loses all trained tokens to truncation and is skipped
    assert report["hyperparameters"]["n_epochs"] == 8  # OpenAI's rule: 100 // 12
    assert report["estimated_training_tokens"] == report["tokens"]["total"] * 8
    assert report["trained_tokens"]["min"] == 2  # "ok" + <|im_end|>


def test_error_summary_for_one_line_messages_names_the_first_five(tmp_path, renderer):
    from tunesmith.data.validate import validate_file
    from tunesmith.errors import DataError

    path = write_jsonl(tmp_path / "data.jsonl", GOOD + ["[1]"] * 7)
    report = validate_file(path, renderer, 512, 10)
    with pytest.raises(DataError) as error:
        report.raise_for_errors()
    message = str(error.value)
    assert message.startswith(f"{path}: line 11: expected a JSON object")
    assert "line 15:" in message and "line 16:" not in message
    assert message.endswith("(and 2 more)")


def test_short_answers_show_the_scaled_learning_rate(tmp_path, smol_info):
    path = write_jsonl(tmp_path / "data.jsonl", GOOD)  # "answer 3" + <|im_end|>: 4 tokens, batch 1
    shown = CliRunner().invoke(app, ["validate", str(path)])
    assert shown.exit_code == 0, shown.output
    report = json.loads(CliRunner().invoke(app, ["validate", str(path), "--json"]).output)
    hp, trained = report["hyperparameters"], report["trained_tokens"]
    assert (hp["batch_size"], trained["min"], trained["max"]) == (1, 4, 4)
    assert hp["learning_rate"] == pytest.approx(5e-4 * (4 / 64) ** 0.5)  # 1.25e-4
    assert "(learning rate 1.25e-04, scaled by 0.25 for 4 answer tokens a step)" in " ".join(shown.output.split())
