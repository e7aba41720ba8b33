"""Where a quality report's JSON answers go wrong, field by field, and whether the tokenizer explains it.

    python bench/quality_misses.py bench-quality.json [more.json ...] [--task extraction] [--top 15]

A tuned model answers in JSON, where a copied value follows a quote (``"occupation": "blacksmith"``),
but it read the value after a space ("works as a blacksmith"). A BPE tokenizer such as SmolLM2's spells
a word differently in the two places (" blacksmith" is one token, "blacksmith" after a quote is
bl|acks|mith), so copying an unseen word into JSON can mean re-spelling it. For every tuned run in
the reports and every test line (each task's test split generated again from the report's data seed), this
counts each string field of the reference answer right or wrong, split by whether the value's first word
has the same pieces after a quote as after a space, and lists the values most often wrong.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from quality_tasks import TASKS, make_task


@dataclass
class Tally:
    wrong: int = 0
    total: int = 0

    def add(self, wrong: bool) -> None:
        self.wrong += wrong
        self.total += 1

    def __str__(self) -> str:
        return f"{self.wrong}/{self.total} ({self.wrong / self.total:.0%})" if self.total else "–"


@dataclass
class FieldMisses:
    """Per field: (field, re-spelled) → Tally, and (field, value) → Tally; each value's spellings."""

    by_spelling: dict[tuple[str, bool], Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_value: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    spelt: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # value → spellings()


def pieces(tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]


def spellings(tokenizer, value: str) -> tuple[list[str], list[str]]:
    """The first word's pieces after a space (as a sentence has it) and after a quote (as JSON has it),
    the space and the quote left out."""
    word = value.split()[0] if value.split() else value
    spaced = [p for p in (p.strip() for p in pieces(tokenizer, " " + word)) if p]
    quoted = pieces(tokenizer, '"' + word)
    return spaced, [p for p in quoted if p != '"'] if quoted[:1] == ['"'] else quoted


def parsed(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tally(report: dict, task_name: str, tokenizer, out: FieldMisses) -> int:
    """Add every run of ``task_name`` in ``report`` to ``out``; the number of runs added."""
    task = make_task(task_name, report.get("data_seed", 0), report.get("quick", False))
    rows = [(row["messages"][-2]["content"], task.reference(row)) for row in task.splits["test"]]
    runs = 0
    for setting in report["tasks"][task_name]["settings"].values():
        for run in setting["runs"]:
            if run.get("seed") is None:  # the untuned base model: it answers no JSON to look at
                continue
            missed = {(m["prompt"], m["expected"]): parsed(m["answer"].strip()) for m in run["misses"]}
            runs += 1
            for key in rows:
                reference = parsed(key[1])
                if reference is None:
                    continue
                answer = missed.get(key, reference)  # not among the misses: every field right
                for name, value in reference.items():
                    if not isinstance(value, str):
                        continue
                    if value not in out.spelt:
                        out.spelt[value] = spellings(tokenizer, value)
                    spaced, quoted = out.spelt[value]
                    wrong = answer is None or answer.get(name) != value
                    out.by_spelling[name, spaced != quoted].add(wrong)
                    out.by_value[name, value].add(wrong)
    return runs


def show(task_name: str, runs: int, misses: FieldMisses, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(emoji=False)
    table = Table(title=f"{task_name}: string fields wrong over {runs} runs, by the first word's spelling in JSON")
    for column in ("field", "same pieces after a quote", "re-spelled after a quote"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for name in dict.fromkeys(n for n, _ in misses.by_spelling):
        table.add_row(name, str(misses.by_spelling.get((name, False), Tally())),
                      str(misses.by_spelling.get((name, True), Tally())))
    console.print(table)
    worst = Table(title=f"{task_name}: the values most often wrong")
    for column in ("field", "value", "wrong", "after a space", "after a quote"):
        worst.add_column(column)
    ranked = sorted(misses.by_value.items(), key=lambda kv: (-kv[1].wrong / kv[1].total, -kv[1].wrong))
    for (name, value), t in [kv for kv in ranked if kv[1].wrong][:top]:
        spaced, quoted = misses.spelt[value]
        worst.add_row(name, value, str(t), "|".join(spaced), "|".join(quoted))
    console.print(worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="JSON reports of bench/quality.py --json")
    parser.add_argument("--task", action="append", choices=sorted(TASKS),
                        help="a task to look at (repeatable; default: every task in the reports)")
    parser.add_argument("--model", help="the base model whose tokenizer to use (default: the one the reports name, "
                                        "else the settings' default model)")
    parser.add_argument("--top", type=int, default=15, help="how many of the most often wrong values to list")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tunesmith.config import enforce_offline, get_settings, quiet_libraries
    from tunesmith.models.loading import ensure_cached

    enforce_offline()
    quiet_libraries()
    reports = [json.loads(path.read_text()) for path in args.reports]
    named = {r["model"] for r in reports if "model" in r}  # reports before the field existed name none
    if not args.model and len(named) > 1:
        raise SystemExit(f"the reports are of different models ({', '.join(sorted(named))}): one at a time")
    model = args.model or next(iter(named), None) or get_settings().default_model
    tokenizer = AutoTokenizer.from_pretrained(ensure_cached(model).path)
    names = args.task or list(dict.fromkeys(t for r in reports for t in r["tasks"]))
    for name in names:
        misses, runs = FieldMisses(), 0
        for report in reports:
            if name in report["tasks"]:
                runs += tally(report, name, tokenizer, misses)
        if misses.by_spelling:
            show(name, runs, misses, args.top)


if __name__ == "__main__":
    main()
