"""Greedy answers of the model being trained to validation questions, scored against the references.

The validation loss says how likely the reference tokens are, not whether the model gives them: it
averages over every token, so it can go on falling while more answers come out wrong (an unseen name
answered as a training name it resembles), or rise on a few confident mistakes while more answers come
out right. So at the end of each epoch the guard also asks the model
up to ``MAX_QUESTIONS`` validation questions whose reference answers are short (at most
``MAX_ANSWER_TOKENS`` tokens) and scores its greedy answers:

- ``valid_exact_match``: the share of answers equal to their reference (whitespace at the ends aside);
- ``valid_field_match``: over references that are JSON objects, the mean share of top-level keys (of
  both objects) whose values are equal JSON values; a missing, extra or wrong key counts against.

A question is read off a tokenized example: its prompt is every token before its last trained
answer, its reference that answer's tokens, decoded. That is the text the trained labels hold,
for any format: a chat answer, a tool call as the template renders it, a completion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunesmith.config import PrecisionSetting
from tunesmith.data.batching import left_padded
from tunesmith.data.tokenize import IGNORE, Renderer, Tokenized
from tunesmith.jsonvalues import parse_json, same_json
from tunesmith.train.precision import device_of, resolve

MAX_QUESTIONS = 50  # enough to tell epochs apart, few enough to cost seconds, not minutes
# Exact answers are a measure for short ones (labels, JSON, calls): a long answer is hardly ever the
# reference word for word, and generating it would cost most of the time.
MAX_ANSWER_TOKENS = 128
EXTRA_TOKENS = 4  # beyond the longest reference: room to see an answer run on, no room to ramble
# Questions answered together: 50 in two batches. Measured on 2 CPU cores (48 questions of 62 to 349
# prompt tokens, answered to the limit of 57 tokens): 75 s in batches of 8, 46 s in batches of 24 with
# the questions in order of prompt length (less padding).
BATCH_SIZE = 25
METRICS = ("valid_exact_match", "valid_field_match")

AnswerScorer = Callable[[torch.nn.Module], dict[str, float]]


@dataclass(frozen=True)
class Question:
    prompt: list[int]
    reference: str
    answer_tokens: int  # the reference's tokens, its end-of-turn token included


def question(example: Tokenized, decode: Callable[[list[int]], str]) -> Question | None:
    """The prompt and reference answer of a tokenized example; None if it was truncated (its
    reference may be cut) or trains nothing."""
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE]
    if example.truncated or not trained:
        return None
    end = start = trained[-1] + 1
    while start > 0 and example.labels[start - 1] != IGNORE:
        start -= 1
    answer = example.input_ids[start:end]
    return Question(example.input_ids[:start], decode(answer), len(answer))


def field_match(answer: str, reference: str) -> float | None:
    """Share of top-level keys with equal values; None where the reference is no JSON object."""
    ok, ref = parse_json(reference)
    if not ok or not isinstance(ref, dict):
        return None
    ok, got = parse_json(answer)
    if not ok or not isinstance(got, dict):
        return 0.0
    keys = ref.keys() | got.keys()
    if not keys:
        return 1.0  # {} answered {}
    return sum(k in ref and k in got and same_json(ref[k], got[k]) for k in keys) / len(keys)


def score_answers(answers: list[str], references: list[str]) -> dict[str, float]:
    """``valid_exact_match`` over all answers, and ``valid_field_match`` where some references are JSON objects."""
    scores = {"valid_exact_match": sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True))
              / max(len(references), 1)}
    fields = [f for a, r in zip(answers, references) if (f := field_match(a, r)) is not None]
    if fields:
        scores["valid_field_match"] = sum(fields) / len(fields)
    return scores


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, stop_ids: list[int],
           precision: PrecisionSetting = "fp32", batch_size: int = BATCH_SIZE,
           temperature: float | None = None) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (each up to, not including, its first stop token), batched,
    with whatever adapters are active; the model is back in the mode it was in afterwards.

    With a ``temperature``, sampled instead (nothing cut from the distribution: no top-k, no top-p),
    from torch's generator: GRPO's groups of answers (``grpo.py``)."""
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    was_training = model.training
    model.eval()
    amp, device = resolve(precision, device_of(model)), device_of(model)
    answers: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            inputs = {k: v.to(device) for k, v in left_padded(prompts[start : start + batch_size], pad_id).items()}
            with amp.autocast():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                     pad_token_id=pad_id, **sampling)
            for ids in out[:, inputs["input_ids"].shape[1] :].tolist():
                answers.append(ids[: next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))])
    finally:
        model.train(was_training)
    return answers


def answer_scorer(valid_set: list[Tokenized], renderer: Renderer,
                  precision: PrecisionSetting = "fp32") -> AnswerScorer | None:
    """What the loop calls at each epoch's end: the scores of the model's answers to the first
    ``MAX_QUESTIONS`` validation examples with short answers. None if there is none."""
    tokenizer = renderer.tokenizer

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    questions = [q for t in valid_set
                 if (q := question(t, decode)) is not None and q.answer_tokens <= MAX_ANSWER_TOKENS][:MAX_QUESTIONS]
    if not questions:
        return None
    questions.sort(key=lambda q: len(q.prompt))  # the scores do not depend on the order; padding does
    prompts, references = [q.prompt for q in questions], [q.reference for q in questions]
    max_new_tokens = max(q.answer_tokens for q in questions) + EXTRA_TOKENS

    def score(model) -> dict[str, float]:
        answers = greedy(model, prompts, max_new_tokens, tokenizer.pad_token_id, renderer.stop_ids, precision)
        return score_answers([decode(a) for a in answers], references)

    return score
