"""Job-level data handling before training: the auto-split and the leakage warning."""

import pytest

from conftest import chat_row, write_jsonl
from tunesmith.data.validate import validate_file
from tunesmith.errors import TunesmithError
from tunesmith.train.run import TrainSpec, _split, _warn_leakage, check_spec


class Messages:
    def __init__(self):
        self.messages = []

    def on_message(self, message):
        self.messages.append(message)


def report_of(tmp_path, renderer, n, name="train.jsonl"):
    rows = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(n)]
    return validate_file(write_jsonl(tmp_path / name, rows), renderer, 256)


def test_auto_split_holds_out_a_seeded_fraction(tmp_path, renderer):
    report = report_of(tmp_path, renderer, 120)
    (train_ex, train), (valid_ex, valid) = _split(report, 0.1, seed=3)
    assert len(valid) == len(valid_ex) == 12 and len(train) == len(train_ex) == 108
    assert not {e.line for e in train_ex} & {e.line for e in valid_ex}
    # examples and their tokenization stay paired
    assert all(t is report.tokenized[e.line - 1] for e, t in zip(valid_ex, valid))
    again = _split(report, 0.1, seed=3)[1][0]
    other = _split(report, 0.1, seed=4)[1][0]
    assert [e.line for e in again] == [e.line for e in valid_ex] != [e.line for e in other]


def test_auto_split_needs_100_examples(tmp_path, renderer):
    with pytest.raises(TunesmithError, match="at least 100 examples, the file has 40"):
        _split(report_of(tmp_path, renderer, 40), 0.1, seed=0)


@pytest.mark.parametrize("spec, message", [
    (TrainSpec("t.jsonl", auto_split=0.7), "at most 0.5"),
    (TrainSpec("t.jsonl", "v.jsonl", auto_split=0.1), "not both"),
    (TrainSpec("t.jsonl", patience=0), "patience"),
])
def test_guard_settings_are_checked(spec, message):
    with pytest.raises(TunesmithError, match=message):
        check_spec(spec)


def test_validation_lines_that_are_training_lines_are_reported(tmp_path, renderer):
    train = report_of(tmp_path, renderer, 20)
    rows = [chat_row("Question 4?", "Answer 4."), chat_row("Something new?", "New."),
            {"user": "Question 9?", "assistant": "Answer 9.", "system": "You are terse."}]  # same, other shape
    valid = validate_file(write_jsonl(tmp_path / "valid.jsonl", rows), renderer, 256, min_examples=1)
    said = Messages()
    _warn_leakage(train.examples, valid.examples, said)
    assert said.messages == ["Warning: 2 of 3 validation examples (lines 1, 3) also appear in the training data: "
                             "the validation loss will look better than it is"]
    said = Messages()
    _warn_leakage(train.examples[:5], valid.examples[1:2], said)
    assert said.messages == []
