"""Check a JSONL training file the way OpenAI's data-preparation checks do.

Every problem names its line and field. Errors stop training; warnings do not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.formats import PREFERENCE, Example, Problem, parse_example, parse_prompt
from tunesmith.data.tokenize import Pair, Prompt, Renderer, Tokenized
from tunesmith.errors import DataError, TemplateError, TunesmithError

DEFAULT_MAX_LENGTH = 2048
MIN_EXAMPLES = 10


@dataclass
class Distribution:
    min: int
    median: float
    p95: float
    max: int
    total: int

    @classmethod
    def of(cls, values: list[int]) -> "Distribution":
        a = np.asarray(values or [0])
        return cls(int(a.min()), float(np.median(a)), float(np.percentile(a, 95)), int(a.max()), int(a.sum()))


@dataclass
class Report:
    path: str
    format: str | None = None
    examples: list[Example] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    tokenized: list[Tokenized | Pair | Prompt] = field(default_factory=list)
    tokens: Distribution | None = None
    trained_tokens: Distribution | None = None
    pair_tokens: dict[str, Distribution] | None = None  # preference data: prompt, chosen, rejected

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_summary(self, limit: int = 5) -> str:
        """The first `limit` errors on one line, for messages that cannot hold a whole report."""
        shown = "; ".join(str(p) for p in self.errors[:limit])
        return shown + (f" (and {len(self.errors) - limit} more)" if len(self.errors) > limit else "")

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DataError(f"{self.path}: {self.error_summary()}", report=self)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "examples": len(self.examples),
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
            "tokens": asdict(self.tokens) if self.tokens else None,
            "trained_tokens": asdict(self.trained_tokens) if self.trained_tokens else None,
            "pair_tokens": {k: asdict(d) for k, d in self.pair_tokens.items()} if self.pair_tokens else None,
        }


def read_examples(path: Path, min_examples: int = MIN_EXAMPLES, prompts: bool = False) -> Report:
    """Parse every line; structural errors only (no tokenizer needed). ``prompts``: the lines are a
    reinforcement fine-tuning job's prompts (``formats.parse_prompt``), not examples to copy."""
    report = Report(str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TunesmithError(f"cannot read {path}: {exc.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    seen_formats: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.errors.append(Problem(number, None, f"not valid UTF-8 (byte {exc.start + 1} of the line)"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.errors.append(Problem(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, arrays nested too deep
            report.errors.append(Problem(number, None, f"unreadable JSON: {type(exc).__name__}: {exc}"))
            continue
        example, problems = (parse_prompt if prompts else parse_example)(obj, number)
        report.errors += problems
        if example is not None:
            seen_formats.setdefault(example.format, number)
            report.examples.append(example)
    if not any(raw.strip() for raw in lines):
        report.errors.append(Problem(None, None, "the file is empty"))
    if len(seen_formats) > 1:
        first = ", ".join(f"{fmt} (first at line {n})" for fmt, n in seen_formats.items())
        report.errors.append(Problem(None, None, f"mixed formats in one file: {first}; use one format"))
    report.format = next(iter(seen_formats), None)
    if report.examples and len(report.examples) < min_examples:
        report.errors.append(Problem(None, None, f"only {len(report.examples)} valid examples; "
                                     f"at least {min_examples} are required"))
    _warn_duplicates(report)
    return report


def validate_file(path: Path, renderer: Renderer | None, max_length: int = DEFAULT_MAX_LENGTH,
                  min_examples: int = MIN_EXAMPLES, preference: bool | None = None, prompts: bool = False) -> Report:
    """Full check: structure, then (with a renderer) tokens and truncation.

    ``preference`` says whether the training method needs preference pairs (DPO) or must not get
    them; None accepts either. ``prompts``: a reinforcement job's prompt lines (``read_examples``)."""
    report = read_examples(path, min_examples, prompts)
    if preference is not None and report.format and (report.format == PREFERENCE) != preference:
        shapes = '"input"/"preferred_output"/"non_preferred_output" or "prompt"/"chosen"/"rejected"'
        report.errors.append(Problem(None, None, f"the DPO method needs preference pairs ({shapes} lines); "
                                     f"this file's format is {report.format}" if preference else
                                     "this file holds preference pairs: they train only with the DPO method"))
    if renderer is None or not report.examples:
        return report
    kept_examples = []
    for example in report.examples:
        try:
            tokenized = renderer.encode(example, max_length)
        except TemplateError as exc:
            report.errors.append(Problem(example.line, "messages", str(exc)))
            continue
        except Exception as exc:  # the chat template met a shape it does not handle (a tool call without arguments, …)
            report.errors.append(Problem(example.line, "messages", f"cannot be rendered with the model's chat "
                                         f"template: {type(exc).__name__}: {exc}"))
            continue
        if tokenized.truncated:
            cut = "skipped" if isinstance(tokenized, Prompt) else "truncated"
            report.warnings.append(Problem(example.line, None, f"longer than max length {max_length} "
                                           f"tokens: {cut}"))
        if not tokenized.trainable:
            if not isinstance(tokenized, Prompt):
                report.warnings.append(Problem(example.line, None, "no trained tokens left after truncation: "
                                               "skipped"))
            continue
        kept_examples.append(example)
        report.tokenized.append(tokenized)
    report.examples = kept_examples
    if report.format != "completion":
        _warn_missing_system(report)
    if report.tokenized:
        report.tokens = Distribution.of([t.n_tokens for t in report.tokenized])
        report.trained_tokens = Distribution.of([t.n_trained for t in report.tokenized])
    pairs = [t for t in report.tokenized if isinstance(t, Pair)]  # a mixed-format file has others too
    if pairs:
        report.pair_tokens = {"prompt": Distribution.of([p.prompt_tokens for p in pairs]),
                              "chosen": Distribution.of([p.chosen.n_trained for p in pairs]),
                              "rejected": Distribution.of([p.rejected.n_trained for p in pairs])}
    return report


def check_item_fields(report: Report, fields: set[str]) -> None:
    """An error for every prompt line that lacks a field its grader reads (``{{ item.field }}``): found
    before the job starts, not as zero rewards while it trains."""
    for example in report.examples:
        for name in sorted(fields - (example.item or {}).keys()):
            report.errors.append(Problem(example.line, name, f"missing: the grader reads item.{name}"))


def _warn_duplicates(report: Report) -> None:
    first_seen: dict[str, int] = {}
    for ex in report.examples:
        if ex.content_key in first_seen:
            report.warnings.append(Problem(ex.line, None, f"exact duplicate of line {first_seen[ex.content_key]}"))
        else:
            first_seen[ex.content_key] = ex.line


def _warn_missing_system(report: Report) -> None:
    lines = [ex.line for ex in report.examples if not ex.has_system]
    if lines:
        report.warnings.append(Problem(None, None, f"{len(lines)} of {len(report.examples)} examples have "
                                       f"no system message (lines {line_list(lines)}); the model's default applies"))


def line_list(lines: list[int], limit: int = 10) -> str:
    """"3, 7, 12" — the first ``limit`` line numbers, then "…" if there are more."""
    return ", ".join(map(str, lines[:limit])) + (", …" if len(lines) > limit else "")
