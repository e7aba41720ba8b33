"""How much a validation set looks like its training set, and so whether it can reveal memorisation.

A model that has memorised its training set (the names it saw, the sentences it saw them in) does
well on validation examples made of the same words and phrasings: the overfitting guard then sees
nothing wrong while answers to unseen names and phrasings get worse. Two cheap measures:

- answer words: the share of the words of the validation answers' values (the leaves of a JSON answer
  or of a tool call's arguments, else the answer's words) that also occur in training answers' values;
- phrasing: the share of the validation prompts' word triples that also occur in training prompts,
  where the prompt is the user turns (a completion's prompt) with the answer's words and every number
  masked, so that only the wording around the values counts.

A validation set is a look-alike when most of its prompts' wording occurs in training: then it cannot
show whether the model learned the task or the training set's sentences. The answer-word share is
reported beside it and only sharpens the advice (hold out unseen names too); alone it says too little:
a classifier's answers are a few labels that training always holds, and new names inside the
training sentences do not reveal memorised phrasings.
Measured on the quality suite's tasks (``bench/quality_tasks.py``): validation sets with unseen
phrasings share 0–33 % of their wording with training; validation sets drawn like the training set
84–100 % (answer words: 41–100 %).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunesmith.data.formats import COMPLETION, Example

LOOKALIKE = 0.8  # phrasing share from which the validation set cannot reveal memorised phrasings
SAME_WORDS = 0.9  # answer-word share from which it cannot reveal memorised values either
_WORD = re.compile(r"\w+")
_VALUE = "<v>"


@dataclass(frozen=True)
class Overlap:
    answer_words: float
    phrasing: float

    @property
    def lookalike(self) -> bool:
        return self.phrasing >= LOOKALIKE

    @property
    def same_words(self) -> bool:
        return self.answer_words >= SAME_WORDS


def overlap(train: list[Example], valid: list[Example]) -> Overlap | None:
    """The two shares for ``valid`` against ``train``; None if either has nothing to compare."""
    valid_words = [w for ex in valid for w in answer_words(ex)]
    valid_triples = [t for ex in valid for t in phrasing(ex)]
    if not train or not valid_words or not valid_triples:
        return None
    seen_words = {w for ex in train for w in answer_words(ex)}
    seen_triples = {t for ex in train for t in phrasing(ex)}
    return Overlap(sum(w in seen_words for w in valid_words) / len(valid_words),
                   sum(t in seen_triples for t in valid_triples) / len(valid_triples))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _leaves(value: Any) -> list[str]:
    """The scalar values inside a JSON value, as text (keys are structure, not values)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [] if value is None else [str(value)]


def _values(text: str) -> list[str]:
    try:
        parsed = json.loads(text)
    except ValueError:
        return [text]
    return _leaves(parsed) if isinstance(parsed, dict | list) else [text]


def answer_words(example: Example) -> list[str]:
    """The words of the values of the example's last trained answer."""
    if example.format == COMPLETION:
        return _words(example.completion or "")
    answer = next(m for m in reversed(example.messages) if m["role"] == "assistant" and m.get("weight", 1))
    values = _values(answer["content"]) if answer["content"].strip() else []
    for call in answer.get("tool_calls", []):
        arguments = call.get("function", call).get("arguments")
        values += _values(arguments) if isinstance(arguments, str) else _leaves(arguments)
    return _words(" ".join(values))


def phrasing(example: Example) -> list[tuple[str, ...]]:
    """The word triples of the example's prompt, its values masked (a shorter prompt is one tuple)."""
    prompt = (example.prompt or "") if example.format == COMPLETION else \
        " \n ".join(m["content"] for m in example.messages if m["role"] == "user")
    values = set(answer_words(example))
    masked: list[str] = []
    for word in _words(prompt):
        word = _VALUE if word in values or any(c.isdigit() for c in word) else word
        if not (word == _VALUE and masked and masked[-1] == _VALUE):  # a value of many words is one value
            masked.append(word)
    return [tuple(masked[i : i + 3]) for i in range(max(1, len(masked) - 2))] if masked else []
