"""OpenAI's graders (tunesmith/graders): each type on right and wrong answers, templates, the multi
grader's formula, the python grader's sandbox, and parse_grader's refusals with the field at fault.
No model: all fast."""

from __future__ import annotations

import os
import time

import pytest

from tunesmith.graders import (Grade, GraderError, Scorer, grader_dict, item_fields, make_sample, parse_grader,
                               template_fields)
from tunesmith.graders.formula import Formula, FormulaError


def check(operation: str, reference: str = "{{ item.answer }}", input: str = "{{ sample.output_text }}") -> dict:
    return {"type": "string_check", "name": "check", "input": input, "reference": reference, "operation": operation}


def similar(metric: str, **extra) -> dict:
    return {"type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}", "evaluation_metric": metric, **extra}


def python(source: str) -> dict:
    return {"type": "python", "name": "py", "source": source}


def score(grader: dict, answer: str, item: dict | None = None, **options) -> Grade:
    with Scorer(parse_grader(grader), **options) as scorer:
        return scorer.score([make_sample(answer)], [item if item is not None else {}])[0]


@pytest.mark.parametrize("operation, answer, reference, expected", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0),
    ("ne", "Lyon", "Paris", 1.0), ("ne", "Paris", "Paris", 0.0),
    ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "IT IS PARIS.", "paris", 1.0), ("ilike", "It is Lyon.", "paris", 0.0),
])
def test_string_check_operations(operation, answer, reference, expected):
    assert score(check(operation), answer, {"answer": reference}) == Grade(expected)


def test_text_similarity_metrics_score_right_answers_above_wrong_ones():
    reference = "the quick brown fox jumps over the lazy dog"
    for metric in ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"):
        same = score(similar(metric), reference, {"answer": reference})
        close = score(similar(metric), "the quick brown fox jumped over a lazy dog", {"answer": reference})
        wrong = score(similar(metric), "completely unrelated words here", {"answer": reference})
        assert same.score == pytest.approx(1.0) and same.error is None, metric
        assert 0.0 <= wrong.score < close.score < 1.0, metric


def test_fuzzy_match_is_symmetric():
    a, b = "kitten sitting", "sitting kitten on a mat"
    forth, back = score(similar("fuzzy_match"), a, {"answer": b}), score(similar("fuzzy_match"), b, {"answer": a})
    assert forth.score == back.score


def test_pass_threshold_turns_the_metric_into_pass_or_fail():
    reference = "the quick brown fox jumps over the lazy dog"
    answer = "the quick brown fox jumped over a lazy dog"
    metric = score(similar("rouge_1"), answer, {"answer": reference}).score
    assert score(similar("rouge_1", pass_threshold=metric - 0.01), answer, {"answer": reference}).score == 1.0
    assert score(similar("rouge_1", pass_threshold=metric + 0.01), answer, {"answer": reference}).score == 0.0


def test_templates_render_item_nested_item_and_output_json():
    grader = check("eq", reference="{{ item.city.name }}/{{item.count}}", input="{{ sample.output_json.city }}/2")
    assert score(grader, '{"city": "Paris"}', {"city": {"name": "Paris"}, "count": 2}) == Grade(1.0)
    assert item_fields(parse_grader(grader)) == {"city", "count"}
    assert template_fields("{{ item.a.b }} {{ sample.output_text }} {{item.c}}") == {"a", "c"}
    as_json = check("eq", reference='{{ item.value }}', input='{"a": [1, 2]}')
    assert score(as_json, "", {"value": {"a": [1, 2]}}) == Grade(1.0)  # not a string: rendered as JSON


def test_a_missing_field_is_that_samples_error():
    missing = score(check("eq"), "Paris", {"other": 1})
    assert missing == Grade(0.0, "item has no field 'answer'", error_type="invalid_variable_error")
    not_json = score(check("eq", input="{{ sample.output_json.city }}"), "Paris", {"answer": "Paris"})
    assert not_json.score == 0.0 and not_json.error_type == "sample_parse_error" and "not JSON" in not_json.error


def test_make_sample_matches_openais_namespace():
    assert make_sample('{"a": 1}') == {"output_text": '{"a": 1}', "output_json": {"a": 1}, "output_tools": []}
    assert make_sample("plain")["output_json"] is None
    assert make_sample("NaN")["output_json"] is None  # not JSON, though Python's json.loads takes it


def multi(formula: str, **graders) -> dict:
    graders = graders or {"exact": check("eq"), "loose": check("ilike")}
    return {"type": "multi", "name": "both", "graders": graders, "calculate_output": formula}


def test_multi_combines_sub_scores_by_formula():
    assert score(multi("0.75 * exact + 0.25 * loose"), "paris", {"answer": "Paris"}) == \
        Grade(0.25, sub_scores={"exact": 0.0, "loose": 1.0})
    assert score(multi("(exact + loose + 1) ^ 2 / 9"), "Paris", {"answer": "Paris"}).score == 1.0
    assert score(multi("max(exact, loose) - min(exact, loose, 0.5)"), "paris", {"answer": "Paris"}).score == 1.0
    assert score(multi("sqrt(abs(-4)) + floor(0.7) + ceil(0.2) + log(exp(loose))"), "paris",
                 {"answer": "Paris"}).score == pytest.approx(4.0)


def test_multi_formula_errors_are_the_samples_not_exceptions():
    zero = score(multi("loose / exact"), "paris", {"answer": "Paris"})
    assert zero.score == 0.0 and "ZeroDivisionError" in zero.error and zero.sub_scores == {"exact": 0.0, "loose": 1.0}
    assert "ValueError" in score(multi("log(exact)"), "paris", {"answer": "Paris"}).error  # math domain error
    assert "not a finite number" in score(multi("(0 - loose) ^ 0.5"), "paris", {"answer": "Paris"}).error
    assert "OverflowError" in score(multi("9 ^ 9 ^ 9 ^ 9 * loose"), "paris", {"answer": "Paris"}).error


def test_multi_with_a_failing_sub_grader_scores_zero_with_its_error():
    grade = score(multi("exact + loose"), "Paris", {})
    assert grade.score == 0.0 and grade.error == "exact: item has no field 'answer'"


def test_formula_is_compiled_once_and_evaluated_many_times():
    formula = Formula("a ^ 2 + b", ["a", "b"])
    assert [formula.evaluate({"a": a, "b": 1}) for a in (0, 1, 2)] == [1.0, 2.0, 5.0]
    with pytest.raises(FormulaError):
        Formula("a + c", ["a"])


GRADE_SOURCE = "def grade(sample, item):\n    return float(sample['output_text'] == item['answer'])\n"


def test_python_grader_scores_and_reports_its_errors():
    assert score(python(GRADE_SOURCE), "Paris", {"answer": "Paris"}) == Grade(1.0)
    assert score(python(GRADE_SOURCE), "Lyon", {"answer": "Paris"}) == Grade(0.0)
    raised = score(python(GRADE_SOURCE), "Paris", {})
    assert raised.score == 0.0 and raised.error == "KeyError: 'answer' (line 2)"
    assert raised.error_type == "python_grader_runtime_error"
    text = score(python("def grade(sample, item):\n    return 'high'\n"), "x")
    assert "returned str, not a number" in text.error
    nan = score(python("def grade(sample, item):\n    return float('nan')\n"), "x")
    assert "not a finite number" in nan.error
    assert score(python("def grade(sample, item):\n    return True\n"), "x") == Grade(1.0)


def test_python_grader_that_hangs_times_out_and_the_next_sample_is_still_scored():
    source = ("def grade(sample, item):\n    while sample['output_text'] == 'loop':\n        pass\n"
              "    return 0.5\n")
    with Scorer(parse_grader(python(source)), timeout_s=0.5) as scorer:
        start = time.monotonic()
        grades = scorer.score([make_sample(t) for t in ("ok", "loop", "ok")], [{}, {}, {}])
        assert time.monotonic() - start < 10
    assert grades[0] == grades[2] == Grade(0.5)
    assert grades[1].score == 0.0 and grades[1].error == "timed out after 0.5 s"


def test_python_grader_memory_bomb_is_an_error():
    bomb = score(python("def grade(sample, item):\n    return len(bytearray(10 ** 10))\n"), "x")
    assert bomb.score == 0.0 and bomb.error == "exceeded 512 MB memory"
    growing = score(python("def grade(sample, item):\n    keep = []\n    while True:\n"
                           "        keep.append(bytearray(10 ** 7))\n"), "x", timeout_s=5)
    assert growing.error == "exceeded 512 MB memory"


@pytest.mark.parametrize("body, message", [
    ("open('/etc/passwd').read()", "may not open files"),
    ("import socket", "may not import socket"),
    ("import subprocess", "may not import subprocess"),
    ("import ctypes", "may not import ctypes"),
    ("__import__('os').system('true')", "may not use os.system"),
    ("__import__('os').listdir('/')", "may not use os.listdir"),
    ("__import__('os').kill(1, 0)", "may not use os.kill"),
    ("__import__('pwd').getpwall()", "may not import pwd"),  # reads the user database through libc
    ("__import__('pathlib').Path('/etc/hostname').read_text()", "may not open files"),
])
def test_python_grader_cannot_reach_files_processes_or_the_network(body, message):
    grade = score(python(f"def grade(sample, item):\n    {body}\n    return 1.0\n"), "x")
    assert grade.score == 0.0 and message in grade.error


def test_python_grader_that_prints_or_reads_stdin_does_not_break_the_protocol():
    source = ("import sys, json\n"
              "def grade(sample, item):\n    print(json.dumps({'score': 99}))\n    print('noise ' * 10000)\n"
              "    sys.stdout.flush()\n    sys.stdin.read()\n    return 0.25\n")
    with Scorer(parse_grader(python(source))) as scorer:
        assert scorer.score([make_sample("a"), make_sample("b")], [{}, {}]) == [Grade(0.25), Grade(0.25)]


def test_python_grader_may_use_the_allowed_standard_library():
    source = ("import json, math, re, statistics, difflib, collections\n"
              "def grade(sample, item):\n"
              "    words = re.findall(r'\\w+', sample['output_text'])\n"
              "    ratio = difflib.SequenceMatcher(None, sample['output_text'], item['answer']).ratio()\n"
              "    return min(1.0, ratio + 0 * statistics.mean([len(w) for w in words]))\n")
    assert score(python(source), "Paris", {"answer": "Paris"}) == Grade(1.0)


def test_python_grader_whose_source_fails_at_load_fails_every_sample():
    with Scorer(parse_grader(python("import socket\ndef grade(sample, item):\n    return 1\n"))) as scorer:
        grades = scorer.score([make_sample("a"), make_sample("b")], [{}, {}])
    assert all(g.score == 0.0 and "may not import socket" in g.error for g in grades)


def test_python_grader_process_is_reused_and_restarted_after_it_dies():
    source = ("import os\nCALLS = []\ndef grade(sample, item):\n    CALLS.append(1)\n"
              "    if sample['output_text'] == 'die':\n        os._exit(3)\n    return float(len(CALLS))\n")
    with Scorer(parse_grader(python(source))) as scorer:
        first = scorer.score([make_sample("a"), make_sample("b")], [{}, {}])
        died = scorer.score([make_sample("die"), make_sample("a")], [{}, {}])
    assert first == [Grade(1.0), Grade(2.0)]  # the same process: its state carries over
    assert died[0].error == "grader process died (exit code 3)" and died[1] == Grade(1.0)  # a fresh one


def test_multi_with_a_python_sub_grader():
    grader = multi("exact * py", exact=check("eq"), py=python(GRADE_SOURCE))
    assert score(grader, "Paris", {"answer": "Paris"}) == Grade(1.0, sub_scores={"exact": 1.0, "py": 1.0})


def test_grader_dict_round_trips():
    grader = multi("exact", exact=check("eq"))
    assert grader_dict(parse_grader(grader)) == grader
    assert parse_grader(grader_dict(parse_grader(grader))) == parse_grader(grader)
    assert grader_dict(parse_grader({**python(GRADE_SOURCE), "image_tag": "2025-05-08"}))["image_tag"] == "2025-05-08"


def nest(levels: int) -> dict:
    grader = check("eq")
    for _ in range(levels - 1):
        grader = multi("inner", inner=grader)
    return grader


@pytest.mark.parametrize("grader, param, message", [
    ({"type": "regex", "name": "x"}, "grader.type", "must be one of"),
    ({"name": "x"}, "grader.type", "must be one of"),
    ("string_check", "grader", "a grader is a JSON object"),
    ({k: v for k, v in check("eq").items() if k != "reference"}, "grader.reference", "Field required"),
    (check("contains"), "grader.operation", "'eq', 'ne', 'like' or 'ilike'"),
    ({**check("eq"), "extra": 1}, "grader.extra", "Extra inputs"),
    (check("eq", reference="{{ item.answer }} {{ answer }}"), "grader.reference", "unknown template variable"),
    (check("eq", input="{{ sample.output }}"), "grader.input", "the sample has no field 'output'"),
    (similar("meteor"), "grader.evaluation_metric", "meteor needs WordNet data"),
    (similar("cosine"), "grader.evaluation_metric", "cosine needs an embeddings model"),
    (similar("bleu", pass_threshold=1.5), "grader.pass_threshold", "less than or equal to 1"),
    ({"type": "score_model", "name": "judge", "model": "gpt-4o", "input": []}, "grader.type",
     "model graders (score_model, label_model) are not supported offline yet"),
    (multi("j", j={"type": "label_model", "name": "judge"}), "grader.graders.j.type", "not supported offline"),
    (python("def grade(sample, item)\n    return 1\n"), "grader.source", "not valid Python"),
    (python("def score(sample, item):\n    return 1\n"), "grader.source", "must define a top-level function grade"),
    (python("class A:\n    def grade(self, sample, item):\n        return 1\n"), "grader.source", "grade(sample"),
    (python("x" * (64 * 1024 + 1)), "grader.source", "at most 65536 characters"),
    ({**check("eq"), "name": "n" * 257}, "grader.name", "at most 256 characters"),
    (check("eq", reference="x" * 4097), "grader.reference", "at most 4096 characters"),
    (multi("exact + nope"), "grader.calculate_output", "names 'nope', which is not one of the graders"),
    (multi("exact.real"), "grader.calculate_output", "may not hold Attribute"),
    (multi("round(exact)"), "grader.calculate_output", "may call only min, max"),
    (multi("__import__('os')"), "grader.calculate_output", "may call only"),
    (multi("(lambda: 1)()"), "grader.calculate_output", "may call only"),
    (multi("lambda: exact"), "grader.calculate_output", "may not hold Lambda"),
    (multi("exact if loose else 0"), "grader.calculate_output", "may not hold IfExp"),
    (multi("exact < loose"), "grader.calculate_output", "may not hold Compare"),
    (multi("exact % 2"), "grader.calculate_output", "may not use Mod"),
    (multi("max(exact, key=loose)"), "grader.calculate_output", "wrong arguments"),
    (multi("min + exact"), "grader.calculate_output", "without calling it"),
    (multi("'a' + exact"), "grader.calculate_output", "only numbers"),
    (multi("exact +"), "grader.calculate_output", "not a formula"),
    (multi("x" * 1025), "grader.calculate_output", "at most 1024 characters"),
    (multi("a", a={**check("eq"), "operation": "is"}), "grader.graders.a.operation", "'eq', 'ne'"),
    (multi("a", a=multi("b", b={**check("eq"), "input": 3})), "grader.graders.a.graders.b.input",
     "valid string"),
    (multi("a", a=similar("meteor")), "grader.graders.a.evaluation_metric", "meteor"),
    (multi("x", **{"not-a-name": check("eq")}), "grader.graders", "is not a name calculate_output can use"),
    (multi("x", **{"max": check("eq")}), "grader.graders", "is not a name"),
    (multi("x", **{f"g{i}": check("eq") for i in range(17)}), "grader.graders", "at most 16 graders"),
    ({"type": "multi", "name": "m", "graders": {}, "calculate_output": "0"}, "grader.graders", "at least one grader"),
    (multi("a", a=multi("b", b=multi("c", c=check("eq")))), "grader.graders.a.graders.b.graders.c",
     "nest at most 3 levels"),
    (multi("+".join(f"p{i}" for i in range(5)), **{f"p{i}": python(GRADE_SOURCE) for i in range(5)}),
     "grader.graders.p4", "at most 4 python graders"),
])
def test_parse_grader_refuses_with_the_field_at_fault(grader, param, message):
    with pytest.raises(GraderError) as refused:
        parse_grader(grader)
    assert refused.value.param == param and message in str(refused.value), str(refused.value)
    assert str(refused.value).startswith(param + ":")


def test_nesting_up_to_the_limit_is_accepted():
    assert score(nest(3), "Paris", {"answer": "Paris"}).score == 1.0
    with pytest.raises(GraderError, match="nest at most 3"):
        parse_grader(nest(4))


@pytest.mark.parametrize("formula, message", [
    ("-" * 1000 + "exact", "nests more than 100"), ("exact" + "+1" * 200, "nests more than 100"),
    ("(" * 300 + "exact" + ")" * 300, "not a formula"), ("1e400 * exact", "too large"), ("9" * 400, "too large"),
    ("exact\x00", "not a formula"),
])
def test_pathological_formulas_are_refused_not_crashed_on(formula, message):
    with pytest.raises(GraderError, match=message) as refused:
        parse_grader(multi(formula))
    assert refused.value.param == "grader.calculate_output"


def test_pathological_python_source_is_refused_not_crashed_on():
    for source in ("-" * 60000 + "1\ndef grade(s, i):\n    return 1\n", "def grade(s, i):\x00\n    return 1\n"):
        with pytest.raises(GraderError, match="not valid Python") as refused:
            parse_grader(python(source))
        assert refused.value.param == "grader.source"


def test_python_grader_started_as_root_runs_as_nobody():
    source = "import os\ndef grade(sample, item):\n    return float(os.getuid())\n"
    expected = 65534.0 if os.geteuid() == 0 else float(os.getuid())
    assert score(python(source), "x") == Grade(expected)
