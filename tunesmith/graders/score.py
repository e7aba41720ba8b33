"""``Scorer``: a parsed grader run over (sample, item) pairs, one Grade each.

A sample that cannot be graded (a missing item field, a python grader that raises or hangs, a formula
dividing by zero) gets a score of 0.0 and its error; scoring never raises for one bad sample. The
metric libraries are imported when first used: nltk alone takes most of a second, and the server
imports this module at startup.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tunesmith.graders.formula import Formula
from tunesmith.graders.sandbox import Sandbox
from tunesmith.graders.spec import MultiGrader, PythonGrader, StringCheckGrader, parse_grader
from tunesmith.graders.templates import RenderError, render


@dataclass(frozen=True)
class Grade:
    score: float
    error: str | None = None
    sub_scores: dict[str, float] | None = None  # a multi grader's: each sub-grader's score, by its key
    # The flag of OpenAI's run response the error sets: python_grader_runtime_error, invalid_variable_error, ...
    error_type: str | None = None


class Scorer:
    """Grades samples with one grader. A python grader's process is started on first use and kept
    for later calls until ``close``. Not thread-safe: one ``score`` at a time."""

    def __init__(self, grader, timeout_s: float = 2.0, memory_mb: int = 512):
        self.grader = parse_grader(grader) if isinstance(grader, dict) else grader
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self._sandboxes: dict[int, Sandbox] = {}  # by id() of the python grader
        self._formulas: dict[int, Formula] = {}  # by id() of the multi grader

    def score(self, samples: list[dict], items: list[dict]) -> list[Grade]:
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples but {len(items)} items")
        return [self._grade(self.grader, sample, item) for sample, item in zip(samples, items)]

    def _grade(self, grader, sample: dict, item: dict) -> Grade:
        if isinstance(grader, MultiGrader):
            return self._multi(grader, sample, item)
        if isinstance(grader, PythonGrader):
            if id(grader) not in self._sandboxes:
                self._sandboxes[id(grader)] = Sandbox(grader.source, self.timeout_s, self.memory_mb)
            score, error, error_type = self._sandboxes[id(grader)].grade(sample, item)
            return Grade(score, None) if error is None else Grade(0.0, error, error_type=error_type)
        try:
            text, reference = render(grader.input, sample, item), render(grader.reference, sample, item)
        except RenderError as exc:
            return Grade(0.0, str(exc), error_type=exc.error_type)
        if isinstance(grader, StringCheckGrader):
            return Grade(float(_string_check(grader.operation, text, reference)))
        try:
            score = _similarity(grader.evaluation_metric, text, reference)
        except Exception as exc:  # noqa: BLE001  (a metric library's failure is that sample's error)
            return Grade(0.0, f"{grader.evaluation_metric} failed: {type(exc).__name__}: {exc}",
                         error_type="other_error")
        if grader.pass_threshold is not None:
            score = float(score >= grader.pass_threshold)
        return Grade(score)

    def _multi(self, grader: MultiGrader, sample: dict, item: dict) -> Grade:
        grades = {key: self._grade(sub, sample, item) for key, sub in grader.graders.items()}
        scores = {key: g.score for key, g in grades.items()}
        failed = next(((key, g) for key, g in grades.items() if g.error), None)
        if failed:  # the formula over a made-up 0.0 would be a reward nobody computed
            key, g = failed
            return Grade(0.0, f"{key}: {g.error}", scores, g.error_type)
        if id(grader) not in self._formulas:
            self._formulas[id(grader)] = Formula(grader.calculate_output, grader.graders)
        try:
            return Grade(self._formulas[id(grader)].evaluate(scores), None, scores)
        except (ArithmeticError, ValueError) as exc:
            return Grade(0.0, f"calculate_output: {type(exc).__name__}: {exc}", scores, "other_error")

    def close(self) -> None:
        for sandbox in self._sandboxes.values():
            sandbox.close()
        self._sandboxes.clear()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _string_check(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":  # OpenAI's: the input contains the reference
        return reference in text
    return reference.casefold() in text.casefold()  # ilike


def _similarity(metric: str, text: str, reference: str) -> float:
    """``text`` against ``reference`` by ``metric``, in [0, 1] (sacrebleu's 100.00000000000004 included)."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        # ratio, not WRatio: symmetric (a against b is b against a), and a short answer that is part of
        # a long reference is not scored as if it were all of it, as WRatio's partial matching would.
        score = fuzz.ratio(text, reference) / 100
    elif metric == "bleu":
        import sacrebleu

        score = sacrebleu.sentence_bleu(text, [reference]).score / 100
    elif metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        score = sentence_gleu([reference.split()], text.split())
    else:  # rouge_1 .. rouge_5, rouge_l: the F-measure
        key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        score = _rouge(key).score(reference, text)[key].fmeasure
    return min(1.0, max(0.0, float(score)))


@functools.lru_cache(maxsize=None)
def _rouge(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key])
