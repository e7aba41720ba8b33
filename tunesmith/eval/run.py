"""Evaluate models on a held-out file: loss on the assistant turns, then scored greedy answers.

The file is read exactly like training data (same validation and tokenization), so the loss here
is the validation loss training reports. Each example becomes one question: the prompt is every
message before its last assistant message, the reference answer is that message. Models on the
same base share one engine, so base vs ``ft:`` loads the base model once.

With a grader (``tunesmith.graders``, the objects reinforcement jobs train against) each answer is
also graded, the file's line being the grader's ``item``. Then the file may also be a reinforcement
job's prompts (conversations ending in a user turn, no reference answer): those have no loss and no
reference to match, only the grader's scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import COMPLETION, PROMPTS, Example
from tunesmith.data.tokenize import Pair, Tokenized
from tunesmith.data.validate import DEFAULT_MAX_LENGTH, check_item_fields, validate_file
from tunesmith.errors import TunesmithError
from tunesmith.eval.metrics import Checks, Rate, Scores, aggregate, score
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.serve.engine import Engine, Sampling
from tunesmith.train.loop import evaluate

BATCH_SIZE = 32  # questions queued together (they share the running batch); progress is told after each group

Prompt = list[dict[str, Any]] | str  # a conversation, or the raw prompt of a completion example
ProgressCallback = Callable[[str, int, int], None]  # (model, questions answered, questions)


@dataclass(frozen=True)
class EvalOptions:
    max_tokens: int = 256
    limit: int | None = None  # only the first N examples of the file
    max_length: int = DEFAULT_MAX_LENGTH
    checks: Checks = Checks()
    grader: dict | None = None  # an OpenAI grader object, checked (graders.parse_grader)


@dataclass
class Item:
    line: int  # of the example in the data file
    prompt: Prompt
    reference: str
    answer: str
    finish_reason: str  # "length": cut at max_tokens
    scores: Scores
    grader_error: str | None = None  # why the grader gave this answer 0, when it could not grade it


@dataclass
class EvalReport:
    model: str
    data: str
    loss: float | None  # mean cross-entropy per trained assistant token; None: prompts, no answers to score
    token_accuracy: float | None
    rates: dict[str, Rate]
    items: list[Item]
    options: EvalOptions = field(default_factory=EvalOptions)

    @property
    def perplexity(self) -> float | None:
        return None if self.loss is None else math.exp(self.loss)

    @property
    def cut(self) -> int:
        """Answers that hit max_tokens: scores of those may only mean the limit is too low."""
        return sum(item.finish_reason == "length" for item in self.items)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "examples": len(self.items), "loss": self.loss,
                "perplexity": self.perplexity, "token_accuracy": self.token_accuracy,
                "scores": {name: rate.as_dict() for name, rate in self.rates.items()},
                "answers_cut_at_max_tokens": self.cut, "options": asdict(self.options),
                "items": [asdict(item) for item in self.items]}


def prompt_and_reference(example: Example) -> tuple[Prompt, str]:
    if example.format == PROMPTS:  # a reinforcement job's line: its grader is the reference
        return [{k: v for k, v in m.items() if k != "weight"} for m in example.messages], ""
    if example.format == COMPLETION:
        return example.prompt or "", example.completion or ""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    # "weight" is a training mark, not part of the conversation the model is shown.
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in example.messages[:last]]
    return prompt, example.messages[last]["content"]


def evaluate_models(models: list[str], data: Path, options: EvalOptions = EvalOptions(),
                    progress: ProgressCallback | None = None, status: Callable[[str], None] | None = None
                    ) -> list[EvalReport]:
    """One report per model, in order, all on the same questions."""
    store = Store()
    resolved = [registry.resolve(m, store) for m in models]
    # Every name, base model and the file are checked before the long part (generation) starts.
    prepared: dict[str, tuple[Engine, list[Example], list[Tokenized]]] = {}
    for r in resolved:
        if r.base not in prepared:
            engine = Engine(r.base, status=status)
            prepared[r.base] = (engine, *_read(data, engine, options))
    return [_evaluate(r, *prepared[r.base], str(data), options, progress) for r in resolved]


def evaluate_on(engine: Engine, models: list[ResolvedModel], data: Path, options: EvalOptions,
                label: str) -> list[EvalReport]:
    """``evaluate_models`` on an engine that is already loaded (the server's), for models on its base;
    ``label`` names the data in the reports instead of its path."""
    examples, tokenized = _read(data, engine, options)
    return [_evaluate(m, engine, examples, tokenized, label, options, None) for m in models]


def _read(data: Path, engine: Engine, options: EvalOptions) -> tuple[list[Example], list[Tokenized]]:
    report = validate_file(data, engine.renderer, options.max_length, min_examples=1)
    if report.errors and options.grader is not None:  # with a grader, a file of prompts will do
        prompts = validate_file(data, engine.renderer, options.max_length, min_examples=1, prompts=True)
        report = prompts if not prompts.errors else report
    if options.grader is not None:
        from tunesmith.graders import item_fields, parse_grader

        _attach_items(report.examples, data)
        check_item_fields(report, item_fields(parse_grader(options.grader)))
    report.raise_for_errors()
    if not report.examples:
        raise TunesmithError(f"{data}: no example is left to evaluate (all longer than "
                             f"{options.max_length} tokens)")
    # A preference pair is scored on its preferred answer: the one the reference answer is.
    tokenized = [t.chosen if isinstance(t, Pair) else t for t in report.tokenized]
    # validate_file keeps examples and their tokenization aligned.
    return report.examples[: options.limit], tokenized[: options.limit]


def _attach_items(examples: list[Example], data: Path) -> None:
    """Each example's whole line as its grader's ``item`` (a prompt line already has its own)."""
    lines = data.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")  # numbered as read_examples numbers them
    for example in examples:
        if example.item is None:
            example.item = json.loads(lines[example.line - 1])


def _evaluate(model: ResolvedModel, engine: Engine, examples: list[Example], tokenized: list[Tokenized],
              data: str, options: EvalOptions, progress: ProgressCallback | None) -> EvalReport:
    loss = {"valid_loss": None, "valid_mean_token_accuracy": None}
    if examples[0].format != PROMPTS:  # prompts have no answers to measure a loss on
        # In the precision training validates in, so this loss is the one training reported.
        loss = engine.exclusive(model, lambda selected: evaluate(
            selected, tokenized, engine.tokenizer.pad_token_id, precision=engine.settings.precision))
    questions = [prompt_and_reference(e) for e in examples]
    sampling = Sampling(max_tokens=options.max_tokens, fit_to_context=True)  # greedy: the same answers every run
    replies = []
    if progress:
        progress(model.name, 0, len(questions))
    for start in range(0, len(questions), BATCH_SIZE):
        batch = [prompt for prompt, _ in questions[start : start + BATCH_SIZE]]
        replies += engine.generate(model, batch, sampling)
        if progress:
            progress(model.name, len(replies), len(questions))
    items = [Item(e.line, prompt, reference, reply.text, reply.finish_reason,
                  {} if e.format == PROMPTS else score(reply.text, reference, options.checks))
             for e, (prompt, reference), reply in zip(examples, questions, replies)]
    if options.grader is not None:
        _grade(items, examples, options.grader)
    return EvalReport(model.name, data, loss["valid_loss"], loss["valid_mean_token_accuracy"],
                      aggregate([item.scores for item in items]), items, options)


def _grade(items: list[Item], examples: list[Example], grader: dict) -> None:
    from tunesmith.graders import Scorer, make_sample

    with Scorer(grader) as scorer:
        grades = scorer.score([make_sample(item.answer) for item in items], [e.item for e in examples])
    for item, grade in zip(items, grades, strict=True):
        item.scores["grader"] = grade.score
        item.grader_error = grade.error
