"""Evaluation reports: a markdown summary (and questions) for the terminal, a self-contained HTML file.

Both show the same cells, formatted once here, so the terminal and the file never disagree. The
HTML has no external assets (inline CSS, no scripts) and escapes everything a model wrote.
"""

from __future__ import annotations

import html
import re
from datetime import datetime

from tunesmith.eval.metrics import Rate
from tunesmith.eval.run import EvalReport, Item, Prompt

SCORE_LABELS = {"exact_match": "exact match", "normalised_match": "normalised match",
                "json_valid": "JSON valid", "json_equal": "JSON equal", "contains": "contains", "regex": "regex",
                "grader": "grader (mean score)"}
MARK_LABELS = {"exact_match": "exact", "normalised_match": "normalised", "json_valid": "JSON",
               "json_equal": "JSON =", "contains": "contains", "regex": "regex", "grader": "grader"}


def _rate(rate: Rate | None) -> str:
    if rate is None or rate.value is None:
        return "n/a"
    if isinstance(rate.hits, float):  # a grader's: the mean of scores from 0 to 1
        return f"{rate.value:.3f} (mean of {rate.n})"
    return f"{rate.value:.1%} ({rate.hits}/{rate.n})"


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def _score_label(name: str, report: EvalReport) -> str:
    checks = report.options.checks
    extra = {"contains": f" {checks.contains!r}", "regex": f" /{checks.regex}/",
             "grader": f" {report.options.grader.get('name', '')!r}" if report.options.grader else ""}.get(name, "")
    return SCORE_LABELS[name] + extra


def summary(reports: list[EvalReport]) -> list[tuple[str, str, list[str]]]:
    """(key, label, one cell per model) for every row of the summary table."""
    first = reports[0]
    rows = [("examples", "questions", [str(len(r.items)) for r in reports]),
            ("loss", "loss (assistant tokens)", [_number(r.loss, ".4f") for r in reports]),
            ("perplexity", "perplexity", [_number(r.perplexity, ".3f") for r in reports]),
            ("token_accuracy", "token accuracy", [_number(r.token_accuracy, ".1%") for r in reports])]
    rows += [(name, _score_label(name, first), [_rate(r.rates.get(name)) for r in reports]) for name in first.rates]
    rows.append(("cut", "answers cut at max tokens", [str(r.cut) for r in reports]))
    return rows


def marks(item: Item) -> list[tuple[str, bool]]:
    """(label, passed) per score; a grader's label carries its score, full marks pass."""
    return [(f"grader {value:g}" if name == "grader" else MARK_LABELS[name],
             value >= 1 if name == "grader" else value) for name, value in item.scores.items() if value is not None]


def question(prompt: Prompt) -> str:
    """What was asked: the last user message (the rest is context), or a completion's raw prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]  # never empty: a conversation can't open with the answer


def _paired(reports: list[EvalReport]) -> list[tuple[Item, list[Item | None]]]:
    """Each question of the first report with every report's item for it (matched by line: a model
    on another base may have skipped an example its tokenizer made too long)."""
    by_line = [{item.line: item for item in r.items} for r in reports]
    return [(item, [lines.get(item.line) for lines in by_line]) for item in reports[0].items]


# --- markdown -------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def _md(text: str) -> str:
    """One table cell of literal text: markdown characters escaped, line breaks shown as ↵."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r\n", "\n").replace("\n", " ↵ ")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(reports: list[EvalReport], questions: bool = False) -> str:
    names = [_md(r.model) for r in reports]
    lines = [f"## {' vs '.join(names)}", "",
             f"{_md(reports[0].data)}: {len(reports[0].items)} questions, greedy answers of at most "
             f"{reports[0].options.max_tokens} tokens", "",
             _md_row(["metric", *names]), _md_row(["---"] + ["--:"] * len(reports))]
    lines += [_md_row([_md(label), *cells]) for _, label, cells in summary(reports)]
    if questions:
        lines += ["", "### Questions", "", _md_row(["line", "question", "reference", *names]),
                  _md_row(["--:"] + ["---"] * (2 + len(reports)))]
        for item, answers in _paired(reports):
            cells = [_md_answer(a) for a in answers]
            lines.append(_md_row([str(item.line), _md(question(item.prompt)), _md(item.reference), *cells]))
    return "\n".join(lines) + "\n"


def _md_answer(item: Item | None) -> str:
    if item is None:
        return "(skipped)"
    shown = " ".join(("✓ " if ok else "✗ ") + label for label, ok in marks(item))
    return f"{_md(shown)} · {_md(item.answer)}"


# --- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 2rem auto; max-width: 1400px; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d1d9e0; padding: .4rem .6rem; vertical-align: top; text-align: left; }
thead th { background: #f6f8fa; } th.model { word-break: break-all; }
#summary { width: auto; } #summary td { text-align: right; font-variant-numeric: tabular-nums; }
#summary tbody th { font-weight: normal; }
/* Fixed layout: the answers get equal widths, side by side. */
#questions { table-layout: fixed; } #questions th.line { width: 3em; }
#questions th.question, #questions th.reference { width: 20%; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0;
      font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; }
td.reference pre { color: #0a3069; }
details { color: #59636e; margin-bottom: .4rem; } details pre { margin: .2rem 0 .4rem; }
.marks { margin-top: .4rem; } .mark { display: inline-block; border-radius: 1em; padding: 0 .55em;
       margin: 0 .25em .2em 0; font-size: 12px; }
.ok { background: #dafbe1; color: #116329; } .bad { background: #ffebe9; color: #a40e26; }
.cut { background: #fff8c5; color: #7d4e00; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def html_report(reports: list[EvalReport]) -> str:
    names = [_e(r.model) for r in reports]
    first = reports[0]
    head = "".join(f'<th class="model">{n}</th>' for n in names)
    summary_rows = "".join(f'<tr data-metric="{key}"><th>{_e(label)}</th>' + "".join(f"<td>{_e(c)}</td>" for c in cells)
                           + "</tr>" for key, label, cells in summary(reports))
    question_rows = "".join(_html_question(item, answers) for item, answers in _paired(reports))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{' vs '.join(names)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{' <span class="meta">vs</span> '.join(names)}</h1>
<p class="meta">{_e(first.data)}: {len(first.items)} questions, greedy answers of at most
{first.options.max_tokens} tokens. Written by tunesmith on {datetime.now():%Y-%m-%d %H:%M}.</p>
<h2>Summary</h2>
<table id="summary"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{summary_rows}</tbody></table>
<h2>Questions</h2>
<table id="questions"><thead><tr><th class="line">line</th><th class="question">question</th>
<th class="reference">reference</th>{head}</tr></thead>
<tbody>{question_rows}</tbody></table>
</body></html>
"""


def _html_question(item: Item, answers: list[Item | None]) -> str:
    context = ""
    if isinstance(item.prompt, list) and len(item.prompt) > 1:
        shown = "".join(f"<pre><b>{_e(m['role'])}</b>: {_e(m['content'])}</pre>" for m in item.prompt)
        context = f"<details><summary>whole conversation</summary>{shown}</details>"
    cells = "".join(_html_answer(a) for a in answers)
    return (f'<tr id="line-{item.line}"><td>{item.line}</td><td class="question">{context}'
            f"<pre>{_e(question(item.prompt))}</pre></td>"
            f'<td class="reference"><pre>{_e(item.reference)}</pre></td>{cells}</tr>')


def _html_answer(item: Item | None) -> str:
    if item is None:
        return '<td class="answer"><span class="mark cut">skipped</span></td>'
    badges = [f'<span class="mark {"ok" if ok else "bad"}">{"✓" if ok else "✗"} {_e(label)}</span>'
              for label, ok in marks(item)]
    if item.finish_reason == "length":
        badges.append('<span class="mark cut">cut at max tokens</span>')
    return f'<td class="answer"><pre>{_e(item.answer)}</pre><div class="marks">{"".join(badges)}</div></td>'
