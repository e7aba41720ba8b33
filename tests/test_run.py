"""Job-level handling around training: the auto-split, the leakage and look-alike warnings, the message
about the chosen epoch, the checkpoint metrics' names."""

import json
from pathlib import Path

import pytest

from conftest import chat_row, write_jsonl
from tunesmith.data.formats import parse_example
from tunesmith.data.overlap import overlap
from tunesmith.data.validate import validate_file
from tunesmith.errors import TunesmithError
from tunesmith.train import loop
from tunesmith.train.run import (EventReporter, TrainSpec, _report_choice, _split, _warn_leakage, _warn_lookalike,
                                 check_spec)


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
    (TrainSpec("t.jsonl", lora_targets="everything"), "unknown lora_targets 'everything'; expected one of all-linear"),
    (TrainSpec("t.jsonl", neftune_alpha=-1), "neftune_alpha must be at least 0"),
    (TrainSpec("t.jsonl", weight_decay=-0.1), "weight_decay must be at least 0"),
])
def test_training_settings_are_checked(spec, message):
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


def people(templates: list[str], names: list[str], cities: list[str], n: int = 12) -> list:
    """Extraction examples: ``templates`` filled with names and cities (each round of names with the next city)."""
    rows = []
    for i in range(n):
        values = {"name": names[i % len(names)], "city": cities[(i // len(names) + i) % len(cities)]}
        rows.append(chat_row(templates[i % len(templates)].format(**values), json.dumps(values)))
    return [parse_example(r, n)[0] for n, r in enumerate(rows, 1)]


TRAIN_TEMPLATES = ["My name is {name} and I live in {city}.", "This is {name} writing from {city}."]
TRAIN = people(TRAIN_TEMPLATES, ["Olga Varga", "Emil Tron", "Ana Silva"], ["Graz", "Porto", "Lyon"])


@pytest.mark.parametrize("valid, advice", [
    (people(TRAIN_TEMPLATES, ["Olga Varga", "Ana Silva"], ["Porto", "Lyon"], 4), "names and phrasings"),
    (people(TRAIN_TEMPLATES, ["Thaddeus Ashcombe", "Imogen Szabo"], ["Brno", "Tampere"], 4), "phrasings"),
])
def test_a_validation_set_phrased_like_the_training_set_is_named(valid, advice):
    said = Messages()
    _warn_lookalike(TRAIN, valid, said)
    (message,) = said.messages
    assert message.startswith("Warning: 100% of the validation prompts' wording (word triples, answer values masked)")
    assert "the validation set looks like the training set, so it cannot reveal memorisation" in message
    assert message.endswith(f"hold out examples with unseen {advice}")


def test_a_validation_set_with_unseen_values_and_phrasings_is_not():
    valid = people(["Profile -- name: {name}; based in {city}", "{city} welcomes {name}, a new neighbour."],
                   ["Thaddeus Ashcombe", "Imogen Szabo"], ["Brno", "Tampere"], 4)
    found = overlap(TRAIN, valid)
    assert found.answer_words == 0 and found.phrasing < 0.5
    said = Messages()
    _warn_lookalike(TRAIN, valid, said)
    assert said.messages == []


def epoch(n: int, valid_loss: float, exact: float | None = None) -> loop.Checkpoint:
    metrics = {"valid_loss": valid_loss} | ({} if exact is None else {"valid_exact_match": exact})
    return loop.Checkpoint(n * 10, n, Path(f"step-{n * 10}"), metrics)


def choice(checkpoints: list, early_stopped: bool = False) -> list[str]:
    said = Messages()
    result = loop.LoopResult(True, checkpoints[-1].step, 0, {}, checkpoints, loop.best_checkpoint(checkpoints),
                             early_stopped)
    _report_choice(result, 2, said)
    return said.messages


def test_the_choice_of_epoch_says_when_exact_answers_overrule_the_loss():
    assert choice([epoch(1, 0.5, 0.6), epoch(2, 0.3, 0.4), epoch(3, 0.4, 0.5)]) == [
        "Best epoch 1, valid_loss 0.5000, valid_exact_match 0.60; chosen by valid_exact_match (greedy answers to "
        "validation questions), which disagrees with the validation loss: epoch 2 had the lowest, valid_loss 0.3000, "
        "valid_exact_match 0.40 (last epoch: valid_loss 0.4000, valid_exact_match 0.50); the model is its checkpoint "
        "(step 10), not the last one"]
    assert choice([epoch(1, 0.3, 0.4), epoch(2, 0.5, 0.6)]) == [
        "Best epoch 2 (the last), valid_loss 0.5000, valid_exact_match 0.60; chosen by valid_exact_match (greedy "
        "answers to validation questions), which disagrees with the validation loss: epoch 1 had the lowest, "
        "valid_loss 0.3000, valid_exact_match 0.40"]
    (early,) = choice([epoch(1, 0.5, 0.6), epoch(2, 0.3, 0.4), epoch(3, 0.2, 0.4)], early_stopped=True)
    assert early.startswith("Early stop at epoch 3: no better epoch for 2 epochs. Best epoch 1, valid_loss 0.5000")


def test_the_choice_of_epoch_by_the_loss_alone_reads_as_before():
    assert choice([epoch(1, 0.5), epoch(2, 0.3), epoch(3, 0.4)]) == [
        "Best epoch 2, valid_loss 0.3000 (last epoch: valid_loss 0.4000); the model is its checkpoint (step 20), "
        "not the last one"]
    assert choice([epoch(1, 0.5, 0.5), epoch(2, 0.3, 0.5)]) == []  # the last is the best by both


def test_checkpoint_metrics_carry_the_answer_scores_but_not_as_whole_file_metrics():
    class Log:
        def write(self, kind, **record):
            self.record = record

    reporter = EventReporter(Log())
    reporter.on_checkpoint(loop.Checkpoint(5, 1, Path("step-5"), {
        "train_loss": 1.0, "valid_loss": 0.5, "valid_exact_match": 0.25, "valid_field_match": 0.5, "epoch": 1.0}))
    assert reporter.log.record["metrics"] == {
        "step": 5, "train_loss": 1.0, "valid_loss": 0.5, "full_valid_loss": 0.5, "valid_exact_match": 0.25,
        "valid_field_match": 0.5}


def test_a_spec_without_a_model_trains_the_settings_default(tmp_path):
    """Not a name fixed in the trainer: a job (or benchmark) that names no base gets TUNESMITH_DEFAULT_MODEL,
    the model the engine serving it also loads."""
    from tunesmith.config import Settings
    from tunesmith.train.run import JobReporter, run_job

    settings = Settings(home=tmp_path / "home", default_model="no-such-base")
    data = write_jsonl(tmp_path / "t.jsonl", [chat_row("Q?", "A.")] * 10)
    with pytest.raises(TunesmithError, match="no-such-base"):
        run_job(TrainSpec(data), JobReporter(), settings)
