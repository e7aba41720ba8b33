"""Render examples with the model's chat template and label only the trained assistant turns.

Labels cover each trained assistant reply from its first content token through the
end-of-turn token (so the tuned model learns to stop), and nothing else: not the system or user
turns, not the ``<|im_start|>assistant`` header, not the newline the template puts after the turn.
A preference example becomes a ``Pair``: the same prompt ending once in each answer, labelled alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tunesmith.data.formats import CHAT, COMPLETION, PREFERENCE, PROMPTS, Example
from tunesmith.errors import TemplateError

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    # With a prompt loss weight (``with_prompt_loss``): every label's weight in the loss; the answer's are 1.
    label_weights: list[float] | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        """The answer's tokens: what the loss is a mean over, and what token accuracy counts."""
        if self.label_weights is None:
            return sum(1 for x in self.labels if x != IGNORE)
        return sum(1 for x, w in zip(self.labels, self.label_weights) if x != IGNORE and w == 1.0)

    @property
    def trainable(self) -> bool:
        return self.n_trained > 0


def with_prompt_loss(t: Tokenized, weight: float) -> Tokenized:
    """``t`` with its other tokens trained too, at ``weight`` each (the legacy API's prompt_loss_weight:
    0.01 there by default): the loss adds weight × their summed NLL to the answer's, per answer token."""
    labels = [token if label == IGNORE else label for token, label in zip(t.input_ids, t.labels)]
    weights = [weight if label == IGNORE else 1.0 for label in t.labels]
    return replace(t, labels=labels, label_weights=weights)


@dataclass
class Pair:
    """A preference pair: the prompt ending in the chosen answer, and ending in the rejected one.

    ``reference`` is the starting model's summed log-probability of each answer (chosen, rejected),
    set once before DPO training starts.
    """

    chosen: Tokenized
    rejected: Tokenized
    reference: tuple[float, float] | None = None

    @property
    def n_tokens(self) -> int:
        return self.chosen.n_tokens + self.rejected.n_tokens

    @property
    def n_trained(self) -> int:
        return self.chosen.n_trained + self.rejected.n_trained

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def trainable(self) -> bool:
        return self.chosen.trainable and self.rejected.trainable

    @property
    def prompt_tokens(self) -> int:
        """Tokens before the answer (the prompt, rendered up to the assistant header)."""
        return next((i for i, x in enumerate(self.chosen.labels) if x != IGNORE), self.chosen.n_tokens)


@dataclass
class Prompt:
    """A reinforcement fine-tuning prompt: the conversation rendered up to the assistant's header (the
    model writes the rest while training), and its line, which the grader reads as ``item``."""

    input_ids: list[int]
    item: dict[str, Any]
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return 0  # the model's own answers are trained, not tokens of the line

    @property
    def trainable(self) -> bool:
        return not self.truncated  # a cut prompt is not the question the grader expects answered


class Renderer:
    """A tokenizer with a chat template plus the token that ends an assistant turn."""

    def __init__(self, tokenizer, end_of_turn: str):
        if not tokenizer.chat_template:
            raise TemplateError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)

    @property
    def stop_ids(self) -> list[int]:
        """The tokens that end a generated answer: the end of a turn, and the end of a completion."""
        return sorted({self.end_of_turn_id, self.tokenizer.eos_token_id})

    def render(self, messages: list[dict[str, Any]], tools=None, generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )

    def trained_spans(self, example: Example) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of every trained assistant reply."""
        msgs, tools = example.messages, example.tools
        text = self.render(msgs, tools)
        spans = []
        for i, msg in enumerate(msgs):
            if msg["role"] != "assistant" or not msg.get("weight", 1):
                continue
            if i == 0:
                raise TemplateError("the conversation starts with an assistant "
                                    "reply; put a system or user message before it")
            before = self.render(msgs[:i], tools, generation_prompt=True)
            upto = self.render(msgs[: i + 1], tools)
            if not (text.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    "the chat template does not render this conversation "
                    "incrementally, so assistant turns cannot be located"
                )
            end = upto.rfind(self.end_of_turn, len(before))
            spans.append((len(before), end + len(self.end_of_turn) if end >= 0 else len(upto)))
        return text, spans

    def encode(self, example: Example, max_length: int) -> Tokenized | Pair | Prompt:
        if example.format == PROMPTS:
            ids = self.encode_prompt(example.messages, example.tools)
            return Prompt(ids[:max_length], example.item or {}, truncated=len(ids) > max_length)
        if example.format == COMPLETION:
            return self._encode_completion(example, max_length)
        if example.format == PREFERENCE:
            chosen = replace(example, format=CHAT, rejected=None)
            rejected = replace(chosen, messages=example.messages[:-1] + [example.rejected])
            return Pair(self._encode_chat(chosen, max_length), self._encode_chat(rejected, max_length))
        return self._encode_chat(example, max_length)

    def _encode_chat(self, example: Example, max_length: int) -> Tokenized:
        text, spans = self.trained_spans(example)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [IGNORE] * len(ids)
        for k, (start, _end) in enumerate(enc["offset_mapping"]):
            if any(a <= start < b for a, b in spans):
                labels[k] = ids[k]
        return _truncate(ids, labels, max_length)

    def _encode_completion(self, example: Example, max_length: int) -> Tokenized:
        tok = self.tokenizer
        prompt = tok(example.prompt, add_special_tokens=True)["input_ids"] if example.prompt else []
        answer = tok(example.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return _truncate(prompt + answer, [IGNORE] * len(prompt) + answer, max_length)

    def encode_prompt(self, messages: list[dict[str, Any]], tools=None) -> list[int]:
        text = self.render(messages, tools, generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _truncate(ids: list[int], labels: list[int], max_length: int) -> Tokenized:
    if len(ids) <= max_length:
        return Tokenized(ids, labels)
    return Tokenized(ids[:max_length], labels[:max_length], truncated=True)
