"""The quality suite's generated tasks (bench/quality_tasks.py): sizes, held-out values and phrasings
that training never shows, exact scorers, and lines tunesmith accepts. No model is loaded, except the
tokenizer for the rendering check."""

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from tunesmith.data.formats import parse_example
from tunesmith.data.validate import read_examples

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import quality_tasks as qt  # noqa: E402

HELD_OUT = ("validation", "test")


@pytest.fixture(scope="module", params=list(qt.TASKS))
def task(request):
    return qt.make_task(request.param, seed=0)


def _instance_of(template: str, text: str) -> bool:
    """Whether ``text`` is ``template`` with some values in its fields."""
    pattern = "".join("(.+?)" if part.startswith("{") else re.escape(part)
                      for part in re.split(r"(\{\w+\})", template))
    return re.fullmatch(pattern, text, re.DOTALL) is not None


def _user(row: dict) -> str:
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def test_split_sizes(task):
    expected = {**qt.SIZES, "train": qt.DEFAULT_TRAIN.get(task.name, qt.SIZES["train"])}
    assert {split: len(rows) for split, rows in task.splits.items()} == expected
    quick = qt.make_task(task.name, quick=True)
    assert {split: len(rows) for split, rows in quick.splits.items()} == qt.QUICK_SIZES


def test_a_larger_training_split_extends_the_smaller_and_leaves_the_others(task):
    larger = qt.make_task(task.name, seed=0, train_lines=len(task.splits["train"]) + 50)
    assert larger.splits["train"][: len(task.splits["train"])] == task.splits["train"]
    assert len(larger.splits["train"]) == len(task.splits["train"]) + 50
    assert {s: larger.splits[s] for s in ("validation", "test")} == {s: task.splits[s] for s in ("validation", "test")}


def test_the_same_seed_gives_the_same_lines(task):
    assert qt.make_task(task.name, seed=0).splits == task.splits
    assert qt.make_task(task.name, seed=1).splits["train"] != task.splits["train"]


@pytest.mark.parametrize("split", HELD_OUT)
def test_no_held_out_value_or_phrasing_occurs_in_training(task, split):
    pools = task.unseen[split]
    training = "\n".join(json.dumps(row, ensure_ascii=False) for row in task.splits["train"]).casefold()
    seen = [v for v in pools.values if re.search(rf"(?<!\w){re.escape(v.casefold())}(?!\w)", training)]
    assert not seen, f"{task.name}: {split} values in training lines: {seen}"
    copied = [(t, _user(row)) for t in pools.templates for row in task.splits["train"] if _instance_of(t, _user(row))]
    assert not copied, f"{task.name}: training lines phrased like {split} templates: {copied[:3]}"


@pytest.mark.parametrize("split", HELD_OUT)
def test_held_out_lines_are_phrased_by_their_own_templates(task, split):
    assert all(any(_instance_of(t, _user(row)) for t in task.unseen[split].templates) for row in task.splits[split])


def _wrong_answers(task, row) -> list[str]:
    reference = task.reference(row)
    wrong = [reference[:-3], ""]
    ok, value = qt.parse_json(reference)
    if ok and isinstance(value, dict):  # one field of the right value but the wrong JSON type
        key = next(k for k, v in value.items() if isinstance(v, int))
        wrong.append(json.dumps({**value, key: str(value[key])}))
    if task.name == "tool_calls":
        name, arguments = qt._call(row)
        wrong += [qt.tool_call_text("no_such_tool", arguments),
                  qt.tool_call_text(name, {**arguments, "extra": 1}),
                  reference + "\n" + reference]  # two calls
    if task.name == "style":
        wrong.append(reference.replace("Hi!", "Hello!"))
    return wrong


def test_the_reference_answer_scores_and_wrong_ones_do_not(task):
    for row in task.splits["test"][:10]:
        assert task.score(task.reference(row), row)
        assert task.score(f"\n{task.reference(row)} \n", row)  # whitespace at the ends does not count
        assert not any(task.score(w, row) for w in _wrong_answers(task, row)), task.reference(row)


@pytest.mark.parametrize("split", qt.SPLITS)
def test_every_line_is_valid_training_data(task, split, tmp_path):
    report = read_examples(write_jsonl(tmp_path / f"{split}.jsonl", task.splits[split]), min_examples=1)
    assert report.errors == [] and report.format == "chat" and len(report.examples) == len(task.splits[split])


def test_the_reference_is_what_the_model_is_trained_to_answer(task, renderer):
    """The scorer's reference is the trained text of the answer, as the chat template renders it
    (for tool calls: the <tool_call> text, not the message's empty content)."""
    for row in task.splits["train"][:5]:
        text, spans = renderer.trained_spans(parse_example(row, 1)[0])
        start, end = spans[-1]
        assert text[start:end].removesuffix(renderer.end_of_turn) == task.reference(row)
