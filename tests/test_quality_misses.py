"""bench/quality_misses.py: a value's spelling after a space and after a quote (the real SmolLM2
tokenizer), and the per-field tally of a report's runs against the regenerated test lines."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import quality_tasks as qt  # noqa: E402
from quality_misses import FieldMisses, spellings, tally  # noqa: E402


def test_a_word_can_be_one_token_after_a_space_and_three_after_a_quote(renderer):
    assert spellings(renderer.tokenizer, "blacksmith") == (["blacksmith"], ["bl", "acks", "mith"])
    spaced, quoted = spellings(renderer.tokenizer, "Imogen Ashcombe")  # the first word only
    assert spaced == quoted == ["Im", "ogen"]


def test_every_string_field_of_every_test_line_is_counted_and_a_miss_only_where_it_differs(renderer):
    task = qt.make_task("extraction", quick=True)
    first, second = task.splits["test"][:2]
    wrong_job = json.loads(task.reference(first)) | {"occupation": "tailor"}
    misses = [{"prompt": first["messages"][-2]["content"], "expected": task.reference(first),
               "answer": json.dumps(wrong_job)},
              {"prompt": second["messages"][-2]["content"], "expected": task.reference(second), "answer": "not JSON"}]
    settings = {"base": {"runs": [{"seed": None, "misses": []}]},  # untuned: left out
                "x": {"runs": [{"seed": 0, "misses": misses}]}}
    report = {"data_seed": 0, "quick": True, "tasks": {"extraction": {"settings": settings}}}
    out = FieldMisses()
    assert tally(report, "extraction", renderer.tokenizer, out) == 1
    lines = len(task.splits["test"])
    for name in ("name", "occupation", "city"):  # age is a number: not a copied string
        assert sum(t.total for (f, _), t in out.by_spelling.items() if f == name) == lines
    wrong = {f: sum(t.wrong for (g, _), t in out.by_spelling.items() if g == f) for f in ("name", "occupation", "city")}
    # the unparsable answer misses every field, the first line its occupation alone
    assert wrong == {"name": 1, "occupation": 2, "city": 1}
    occupation = json.loads(task.reference(first))["occupation"]
    assert out.by_value["occupation", occupation].wrong >= 1
    assert ("age", False) not in out.by_spelling
