"""Evaluation: answer scores, reports, and `compare` agreeing with `eval` on a base and a tuned model."""

import json
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import time

import pytest
from typer.testing import CliRunner

from conftest import SMOL, chat_row, write_jsonl
from tunesmith.cli import app
from tunesmith.data.formats import parse_example
from tunesmith.errors import TunesmithError
from tunesmith.eval import metrics
from tunesmith.eval.metrics import Checks, Rate
from tunesmith.eval.report import html_report, markdown
from tunesmith.eval.run import EvalOptions, EvalReport, Item, prompt_and_reference

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "json_extraction"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: the HTML report is not "
                                    "rendered (apt-get install -y chromium; .ci/run does it)")


# --- scores ---------------------------------------------------------------------------------------

def test_exact_and_normalised_match():
    assert metrics.exact("Paris", "Paris") and not metrics.exact("Paris.", "Paris")
    assert metrics.normalise("  ¿Hello,\n  WORLD!… ") == "hello, world"
    assert metrics.normalised("The  answer is\tParis.", "the answer is paris")
    assert metrics.normalised("STRASSE", "straße")  # casefold, not lower
    assert not metrics.normalised("Paris, France", "Paris France")  # punctuation inside counts


def test_json_valid_is_strict():
    assert metrics.json_valid('{"a": [1, 2.5, null]}') and metrics.json_valid(" 42 ")
    for bad in ('{"a": NaN}', "Infinity", '{"a": 1} trailing', "{'a': 1}", "```json\n{}\n```", ""):
        assert not metrics.json_valid(bad), bad


def test_json_equal_ignores_key_order_only():
    assert metrics.json_equal('{"b": 1, "a": {"y": 2, "x": [1, 2]}}', '{"a": {"x": [1, 2], "y": 2}, "b": 1}')
    assert metrics.json_equal('{"quantity": 3.0}', '{"quantity": 3}')  # one JSON number
    assert not metrics.json_equal('{"a": [2, 1]}', '{"a": [1, 2]}')  # arrays keep their order
    assert not metrics.json_equal('{"ok": true}', '{"ok": 1}')  # Python's True == 1 is not JSON's
    assert not metrics.json_equal('{"a": "1"}', '{"a": 1}')
    assert not metrics.json_equal('{"a": 1}', '{"a": 1, "b": 2}')
    assert not metrics.json_equal("not json", "not json")


def test_score_applies_json_scores_only_to_json_references_and_checks_only_when_asked():
    assert metrics.score("Paris", "Paris") == {"exact_match": True, "normalised_match": True,
                                               "json_valid": None, "json_equal": None}
    scores = metrics.score('{"city": "Rome"}', '{"city": "Paris"}', Checks(contains="Rome", regex=r"^\{.*\}$"))
    assert scores == {"exact_match": False, "normalised_match": False, "json_valid": True, "json_equal": False,
                      "contains": True, "regex": True}
    assert metrics.score("7", "7")["json_valid"] is None  # a bare number is not a structured answer


def test_aggregate_takes_each_rate_over_the_items_it_applies_to():
    rates = metrics.aggregate([metrics.score("a", "a"), metrics.score("{}", "{}"), metrics.score("[1]", "[2]")])
    assert rates["exact_match"] == Rate(2, 3)
    assert rates["json_valid"] == Rate(2, 2) and rates["json_equal"] == Rate(1, 2)
    assert Rate(0, 0).value is None and Rate(1, 4).as_dict() == {"rate": 0.25, "hits": 1, "n": 4}


def test_bad_regex_is_a_user_error():
    with pytest.raises(TunesmithError, match="invalid regex"):
        Checks(regex="(")
    with pytest.raises(TunesmithError, match="no backreferences"):
        Checks(regex=r"(a)\1")


def test_a_catastrophic_pattern_matches_in_linear_time():
    # Python's re backtracks through 2**30 ways to split the a's before it gives up
    started = time.perf_counter()
    assert not Checks(regex="(a+)+$").matches("a" * 30 + "b")
    assert not Checks(regex="^(a|aa)+$").matches("a" * 5000 + "b")
    assert time.perf_counter() - started < 0.5


def test_prompt_is_everything_before_the_last_assistant_message():
    example, _ = parse_example({"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "weight": 0}, {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"}]}, 1)
    prompt, reference = prompt_and_reference(example)
    assert reference == "A2"
    assert prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                      {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    completion, _ = parse_example({"prompt": "2+2=", "completion": "4"}, 2)
    assert prompt_and_reference(completion) == ("2+2=", "4")
    pair, _ = parse_example(_preference_row("Q", "good", "bad"), 3)
    assert prompt_and_reference(pair) == ([{"role": "user", "content": "Q"}], "good")


def _preference_row(user: str, preferred: str, other: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": other}]}


# --- reports --------------------------------------------------------------------------------------

class _Tables(HTMLParser):
    """The rows of every table, by table id: each row its attributes and cells (class, text, <pre> texts)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[tuple[dict, list[dict]]]] = {}
        self._table = self._cell = None
        self._pre: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append((attrs, []))
        elif tag in ("td", "th") and self._table:
            self._cell = {"class": attrs.get("class"), "text": "", "pre": []}
            self._table[-1][1].append(self._cell)
        elif tag == "pre" and self._cell is not None:
            self._pre = []

    def handle_endtag(self, tag):
        if tag == "pre" and self._pre is not None:
            self._cell["pre"].append("".join(self._pre))
            self._pre = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._pre is not None:
            self._pre.append(data)

    def summary(self) -> dict[str, list[str]]:
        return {attrs["data-metric"]: [c["text"] for c in cells[1:]]
                for attrs, cells in self.tables["summary"] if "data-metric" in attrs}

    def answers(self) -> dict[int, list[str]]:
        return {int(attrs["id"].removeprefix("line-")): [c["pre"][0] for c in cells if c["class"] == "answer"]
                for attrs, cells in self.tables["questions"] if "id" in attrs}


def _report(model: str, answers: list[str], references: list[str], checks: Checks = Checks()) -> EvalReport:
    items = [Item(i + 2, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": f"q{i} <b>&"}],
                  ref, ans, "stop" if len(ans) < 40 else "length", metrics.score(ans, ref, checks))
             for i, (ans, ref) in enumerate(zip(answers, references))]
    return EvalReport(model, "held|out.jsonl", 0.123456, 0.5, metrics.aggregate([i.scores for i in items]),
                      items, EvalOptions(max_tokens=40, checks=checks))


@pytest.fixture
def two_reports():
    refs = ['{"a": 1}', "Paris", "line one\nline two"]
    checks = Checks(contains="Paris")
    return [_report("base", ['<script>alert("x")</script>', "paris.", "x" * 50], refs, checks),
            _report("ft:base:local:s:id", ['{"a":1}', "Paris", "line one\nline | two"], refs, checks)]


def test_markdown_escapes_cells_and_lists_every_question(two_reports):
    text = markdown(two_reports, questions=True)
    assert "| metric | base | ft:base:local:s:id |" in text
    assert "| loss (assistant tokens) | 0.1235 | 0.1235 |" in text
    assert "| JSON equal | 0.0% (0/1) | 100.0% (1/1) |" in text
    assert "| contains 'Paris' | 0.0% (0/3) | 33.3% (1/3) |" in text
    assert "| answers cut at max tokens | 1 | 0 |" in text
    assert r"\<script\>alert" in text and r"line \| two" in text and "line one ↵ line two" in text
    question_rows = text.split("### Questions")[1].strip().splitlines()[2:]
    assert len(question_rows) == 3 and all(row.count(" | ") == 4 for row in question_rows)
    assert "### Questions" not in markdown(two_reports[:1])


def test_html_is_self_contained_and_escapes_model_output(two_reports):
    page = html_report(two_reports)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "src=" not in page and "href=" not in page and "@import" not in page  # no external assets
    tables = _Tables(page)
    assert tables.summary()["normalised_match"] == ["33.3% (1/3)", "33.3% (1/3)"]
    assert tables.answers()[4] == ["x" * 50, "line one\nline | two"]


def _render(page: Path, out_dir: Path) -> tuple[Path, str]:
    """Screenshot and DOM of ``page`` as headless Chromium renders it (nothing is fetched)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={out_dir / 'chromium-profile'}", "--window-size=1280,2000"]
    png = out_dir / "report.png"
    subprocess.run([*flags, f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return png, dom


def _png_facts(png: bytes) -> tuple[int, int, int]:
    """Width, height, and how many distinct byte values the (filtered) pixel rows hold: a blank page
    compresses to a handful, a page of text and colour to well over a hundred."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, idat = 8, (0, 0), b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return *size, len(set(zlib.decompress(idat)))


def _check_rendered(page: Path, out_dir: Path, capsys) -> str:
    png, dom = _render(page, out_dir)
    width, height, distinct = _png_facts(png.read_bytes())
    assert (width, height) == (1280, 2000)
    assert png.stat().st_size > 20_000 and distinct > 100, "the screenshot looks blank"
    with capsys.disabled():
        print(f"\nscreenshot of {page.name}: {png}")
    return dom


@needs_chromium
def test_html_renders_in_headless_chromium(two_reports, tmp_path_factory, capsys):
    out_dir = tmp_path_factory.mktemp("report-render")
    page = out_dir / "report.html"
    page.write_text(html_report(two_reports), encoding="utf-8")
    dom = _check_rendered(page, out_dir, capsys)
    tables = _Tables(dom)
    assert tables.summary()["exact_match"] == ["0.0% (0/3)", "33.3% (1/3)"]
    assert tables.answers()[2] == ['<script>alert("x")</script>', '{"a":1}']  # shown as text, not run


# --- the real model -------------------------------------------------------------------------------

def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_unknown_model_and_bad_regex_are_one_line_errors(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row("hi", "hello")])
    for args, message in ((["eval", "ft:smollm2-135m-instruct:local:x:nope", "--data", str(data)], "unknown model"),
                          (["eval", "gpt-9", "--data", str(data)], "unknown base model 'gpt-9'"),
                          (["compare", SMOL, SMOL, "--data", str(data), "--regex", "("], "invalid regex")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_bad_data_file_is_reported_with_its_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row("hi", "hello"), "{not json"])
    result = CliRunner().invoke(app, ["eval", SMOL, "--data", str(data)])
    assert result.exit_code == 1 and "line 2: invalid JSON" in result.output
    result = CliRunner().invoke(app, ["eval", SMOL, "--data", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 1 and "cannot read" in result.output


@pytest.mark.slow
def test_preference_pairs_are_scored_on_the_preferred_answer(tmp_path):
    rows = [("Capital of France?", "Paris.", "Rome."), ("2 + 2?", "4", "5")]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [_preference_row(*r) for r in rows])
    chats = write_jsonl(tmp_path / "chat.jsonl", [chat_row(u, p, system=None) for u, p, _ in rows])
    reports = [json.loads(_cli("eval", SMOL, "--data", str(f), "--max-tokens", "4", "--json")) for f in (pairs, chats)]
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"], rel=1e-6)
    assert [i["reference"] for i in reports[0]["items"]] == ["Paris.", "4"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, smol_info):
    """A model tuned for one short epoch, then `eval` on it and on the base, and `compare` of the two."""
    work = tmp_path_factory.mktemp("eval")
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--out", str(work), "--train", "20",
                    "--heldout", "8"], check=True, capture_output=True)
    heldout = str(work / "heldout.jsonl")
    trained = _cli("train", str(work / "train.jsonl"), "--validation", heldout, "--epochs", "1",
                   "--batch-size", "4", "--seed", "1", "--suffix", "eval", "--json")
    trained = json.loads(trained[trained.index("{"):])
    tuned = trained["fine_tuned_model"]
    flags = ["--data", heldout, "--max-tokens", "40", "--contains", "Bilbao"]
    evals = {}
    for model in (SMOL, tuned):
        text = _cli("eval", model, *flags, "--json")
        evals[model] = json.loads(text[text.index("{"):])
    page = work / "report.html"
    shown = _cli("compare", SMOL, tuned, *flags, "--out", str(page))
    return {"trained": trained, "evals": evals, "models": [SMOL, tuned], "markdown": shown, "html": page,
            "dir": work}


def _formatted(report: dict) -> dict[str, str]:
    """The summary cells of one model, formatted from its `eval --json` numbers."""
    cells = {"examples": str(report["examples"]), "loss": f"{report['loss']:.4f}",
             "perplexity": f"{report['perplexity']:.3f}", "token_accuracy": f"{report['token_accuracy']:.1%}",
             "cut": str(report["answers_cut_at_max_tokens"])}
    for name, s in report["scores"].items():
        cells[name] = f"{s['rate']:.1%} ({s['hits']}/{s['n']})" if s["n"] else "n/a"
    return cells


@pytest.mark.slow
def test_compare_numbers_match_eval_of_each_model(evaluated):
    base, tuned = (evaluated["evals"][m] for m in evaluated["models"])
    assert base["examples"] == tuned["examples"] == 8
    assert set(base["scores"]) == {"exact_match", "normalised_match", "json_valid", "json_equal", "contains"}
    # The loss is the trainer's own validation loss of the final weights.
    assert tuned["loss"] == pytest.approx(evaluated["trained"]["metrics"]["valid_loss"], rel=1e-4)
    assert tuned["loss"] < base["loss"]

    expected = {key: [_formatted(base)[key], _formatted(tuned)[key]] for key in _formatted(base)}
    html = _Tables(evaluated["html"].read_text())
    assert html.summary() == expected
    assert html.answers() == {a["line"]: [a["answer"], b["answer"]] for a, b in zip(base["items"], tuned["items"])}

    labels = {"examples": "questions", "loss": "loss (assistant tokens)", "perplexity": "perplexity",
              "token_accuracy": "token accuracy", "exact_match": "exact match",
              "normalised_match": "normalised match", "json_valid": "JSON valid", "json_equal": "JSON equal",
              "contains": "contains 'Bilbao'", "cut": "answers cut at max tokens"}
    for key, cells in expected.items():
        assert f"| {labels[key]} | {' | '.join(cells)} |" in evaluated["markdown"]
    print("\ncompare vs eval:", {key: cells for key, cells in expected.items()})


@pytest.mark.slow
@needs_chromium
def test_compare_report_renders_in_headless_chromium(evaluated, capsys):
    dom = _check_rendered(evaluated["html"], evaluated["dir"], capsys)
    tables = _Tables(dom)
    assert tables.summary() == _Tables(evaluated["html"].read_text()).summary()
    assert len(tables.answers()) == 8
