"""Constrained decoding for ``response_format`` ``json_schema`` / ``json_object``, with llguidance.

Why llguidance: measured on this project's 2-core AVX2 machine with SmolLM2's 49k vocabulary and
the README's extraction schema, computing the allowed-token mask costs 0.10 ms a token and
consuming a token 0.01 ms; xgrammar computes its mask in 0.19 ms but pulls in triton (1 GB) on a
CPU-only install. llguidance is one 8 MB wheel with no dependencies. Its own torch helper for
applying the mask compiles a kernel (44 ms a call here), so the mask is applied with numpy instead.
"""

from __future__ import annotations

import json
import threading

import llguidance
import llguidance.hf
import numpy as np
import torch

from tunesmith.errors import TunesmithError

MAX_SCHEMA_CHARS = 64_000  # a schema is compiled on the request's thread; bound the work a client can ask for
# The last tokens of an answer's budget are kept for closing the JSON: an untuned model can write one
# string forever ("(2023-01-01) (2023-01-01) ..."), and an answer cut by max_tokens would not parse.
CLOSING_RESERVE = 32
ENDS = set("}]")  # tokens made of these end objects and arrays


class InvalidGrammar(TunesmithError):
    code = "invalid_value"
    param = "response_format"


class Grammars:
    """Compiles a request's response format into a matcher for one tokenizer (built once, lazily)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self._tokenizer, self.vocab_size, self._stop_ids = tokenizer, vocab_size, stop_ids
        self._info = None
        self._quotes: torch.Tensor | None = None  # tokens that start with a quote: they end a string
        self._ends: torch.Tensor | None = None
        self._lock = threading.Lock()

    def _tokenizer_info(self):
        with self._lock:
            if self._info is None:
                self._info = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self.vocab_size,
                                                          eos_token=self._stop_ids[0])
                quotes = torch.zeros(self.vocab_size, dtype=torch.bool)
                ends = torch.zeros(self.vocab_size, dtype=torch.bool)
                for token, piece in enumerate(self._tokenizer.convert_ids_to_tokens(range(len(self._tokenizer)))):
                    text = self._tokenizer.convert_tokens_to_string([piece]).strip()
                    quotes[token] = text.startswith('"')
                    ends[token] = bool(text) and set(text) <= ENDS
                ends[self._stop_ids] = True
                self._quotes, self._ends = quotes, ends
            return self._info

    def compile(self, schema: dict | None) -> "Matcher":
        """A matcher for JSON that validates against ``schema`` (None: any JSON object)."""
        text = json.dumps({"type": "object"} if schema is None else schema)
        if len(text) > MAX_SCHEMA_CHARS:
            raise InvalidGrammar(f"response_format: the JSON schema is longer than {MAX_SCHEMA_CHARS} characters")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False})
        except ValueError as exc:
            raise InvalidGrammar(f"response_format: the JSON schema cannot be used: {exc}") from exc
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer_info())
        if failed:
            raise InvalidGrammar(f"response_format: the JSON schema cannot be used: {'; '.join(messages)}")
        return Matcher(llguidance.LLMatcher(self._tokenizer_info(), grammar), self.vocab_size, self._quotes, self._ends)


class Matcher:
    """Where one answer is in its grammar: which tokens may come next."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, quotes: torch.Tensor, ends: torch.Tensor):
        self._matcher, self._vocab, self._quotes, self._ends = matcher, vocab_size, quotes, ends
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def mask(self, logits: torch.Tensor, closing_after: str | None = None) -> None:
        """Set the logits of every token the grammar does not allow next to -inf, in place.

        ``closing_after`` (the budget is nearly spent; the JSON so far): of the allowed tokens, keep the
        ones that head for the end: inside a string, those that end it; outside, those that end objects
        and arrays (or the answer), else those that open a string that can end at once (a required
        key's value). The grammar itself fills in what must come between, like required keys."""
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        allowed = torch.from_numpy(
            np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self._vocab].astype(bool))
        if closing_after is not None:
            preferred = [self._quotes] if _in_string(closing_after) else [self._ends, self._quotes]
            for tokens in preferred:
                if (allowed & tokens).any():
                    allowed &= tokens
                    break
        logits.masked_fill_(~allowed, float("-inf"))

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"grammar refused token {token}: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        return self._matcher.is_stopped()


def _in_string(json_text: str) -> bool:
    """Whether JSON text ends inside a string: an odd number of quotes that no backslash escapes."""
    inside, escaped = False, False
    for c in json_text:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = inside
        elif c == '"':
            inside = not inside
    return inside
