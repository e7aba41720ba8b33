"""Per-row token choice and per-row text: what one answer asked for, and how far it has got.

Each row of a batch has its own settings: greedy or sampled (temperature, top_p), its own random
generator (so a seeded answer is the same alone or in any batch), its own grammar and stop strings.
``Answer`` turns the row's tokens into text as they come: the pieces it gives out join up to exactly
the final text, and never show the start of a stop string that may still complete.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import torch

from tunesmith.serve.grammar import CLOSING_RESERVE, Matcher


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The client left max_tokens unset: the default shrinks to what the context leaves, instead of an error.
    fit_to_context: bool = False
    top_logprobs: int | None = None  # None: no log-probabilities; 0: the chosen token's only
    # Constrain the answer to JSON: ("json_schema", schema) or ("json_object", None)
    response_format: tuple[str, dict | None] | None = None


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int  # up to and including the token that ended the reply, as OpenAI counts
    finish_reason: str  # "stop": end of turn or a stop string; "length": max_tokens reached
    logprobs: list[TokenLogprob] | None = None


class Row:
    """How one row chooses its tokens."""

    def __init__(self, sampling: Sampling, seed: int | None, grammar: Matcher | None):
        self.sampling, self.grammar = sampling, grammar
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator().manual_seed(
                random.getrandbits(63) if seed is None else seed % 2**64)

    def choose(self, logits: torch.Tensor, answer: "Answer") -> int:
        """The next token of ``answer`` from this row's logits (float32, 1-D; changed in place by the grammar)."""
        if self.grammar is not None:
            left = self.sampling.max_tokens - len(answer.ids)
            closing = left <= min(CLOSING_RESERVE, self.sampling.max_tokens // 4)
            self.grammar.mask(logits, answer.text if closing else None)
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            beyond = sorted_probs.cumsum(0) - sorted_probs > self.sampling.top_p  # keeps the token that crosses
            probs = probs.index_fill(0, order[beyond], 0.0)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def accept(self, token: int) -> None:
        if self.grammar is not None:
            self.grammar.accept(token)


class Answer:
    """The text of one row, grown a token at a time; ``finish_reason`` is set once it has ended."""

    def __init__(self, tokenizer, stop_ids: list[int], sampling: Sampling, prompt_tokens: int):
        self.tokenizer, self.stop_ids, self.sampling = tokenizer, stop_ids, sampling
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        # Incremental decoding (TGI's decode_token): the text of ids[:_read] is settled, and each new
        # token decodes only ids[_prefix:], so a long answer costs linear, not quadratic, decoding.
        self._settled = ""
        self._prefix = self._read = 0
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if sampling.top_logprobs is not None else None

    def add(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Take the next token; the new text that is safe to show."""
        self.ids.append(token)
        if self.logprobs is not None and logprob is not None and token not in self.stop_ids:
            self.logprobs.append(logprob)  # the end-of-turn token is counted but not shown, as at OpenAI
        stops = self.sampling.stop
        if token in self.stop_ids:
            self.finish_reason = "stop"
        else:
            # The settled text was searched at earlier tokens: a stop string not found there begins
            # at most (longest stop - 1) characters before its end, so a long answer is not rescanned.
            start = max(0, len(self._settled) - max(map(len, stops), default=0) + 1)
            self.text = self._grow()
            cut = _first_stop(self.text, stops, start)
            if cut is not None:
                self.text, self.finish_reason = self.text[:cut], "stop"
            elif len(self.ids) >= self.sampling.max_tokens:
                self.finish_reason = "length"
        ready = len(self.text) if self.finish_reason else len(self.text) - _undecided(self.text, stops)
        piece = self.text[self.sent : ready] if ready > self.sent else ""
        self.sent = max(self.sent, ready)
        return piece

    def reply(self) -> Reply:
        return Reply(self.text, self.prompt_tokens, len(self.ids), self.finish_reason or "length", self.logprobs)

    def _grow(self) -> str:
        """The whole text so far. The window starts at the tokens that settled last, because a tokenizer
        may decode a token differently at the start of a text (a dropped leading space): the new text is
        what the window's decoding adds to theirs. It settles once it does not end in the bytes of an
        unfinished character (U+FFFD)."""
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=True)
        before = decode(self.ids[self._prefix : self._read])
        new = decode(self.ids[self._prefix :])[len(before) :]
        if new and not new.endswith("\ufffd"):
            self._settled += new
            self._prefix, self._read = self._read, len(self.ids)
            return self._settled
        return self._settled + new


def logprobs_of(tokenizer, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability and the ``top`` most likely, as OpenAI reports them."""

    def entry(t: int) -> tuple[str, float, list[int]]:
        text = tokenizer.decode([t])
        return text, float(logprobs[t]), list(text.encode())

    text, value, raw = entry(token)
    best = torch.topk(logprobs, top).indices.tolist() if top else []
    return TokenLogprob(text, value, raw, [entry(t) for t in best])


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    """Where the earliest stop string starts in ``text[start:]``, if any does."""
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _undecided(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still change: the bytes of an incomplete character,
    or what may be the start of a stop string (which the reply must not show)."""
    incomplete = len(text) - len(text.rstrip("\ufffd"))
    if incomplete:
        return incomplete
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
