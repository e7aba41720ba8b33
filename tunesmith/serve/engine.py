"""Generation: one base model in memory, fine-tuned adapters loaded on demand and switched by name.

LoRA adapters are small: switching is a ``set_adapter`` call, not a model load. Fully fine-tuned
models are whole models and are loaded on their own.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunesmith.config import Settings, get_settings
from tunesmith.data.batching import left_padded
from tunesmith.errors import TunesmithError
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.models.loading import BaseInfo, ensure_cached, load_model, load_renderer


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The client left max_tokens unset: the default shrinks to what the context leaves, instead of an error.
    fit_to_context: bool = False


class ContextLengthExceeded(TunesmithError):
    """The prompt, or the prompt and the answer asked for, do not fit in the model's context (OpenAI's words)."""

    code = "context_length_exceeded"

    def __init__(self, context: int, prompt: int, completion: int, param: str):
        where = "messages" if param == "messages" else "prompt"
        super().__init__(f"This model's maximum context length is {context} tokens. However, you requested "
                         f"{prompt + completion} tokens ({prompt} in the {where}, {completion} in the completion). "
                         f"Please reduce the length of the {where} or completion.")
        self.param = param


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int  # up to and including the token that ended the reply, as OpenAI counts
    finish_reason: str  # "stop": end of turn or a stop string; "length": max_tokens reached


class Engine:
    def __init__(self, base: str, settings: Settings | None = None, status=None):
        self.settings = settings or get_settings()
        torch.set_num_threads(self.settings.threads)
        self.info = ensure_cached(base, self.settings, status=status)
        self.renderer = load_renderer(self.info)
        self.tokenizer = self.renderer.tokenizer
        self.tokenizer.padding_side = "left"
        self.base_model = load_model(self.info).eval()
        self._adapters: set[str] = set()
        self._full: dict[str, object] = {}
        self._stop_ids = self.renderer.stop_ids
        self.context = self.base_model.config.max_position_embeddings

    def select(self, resolved: ResolvedModel):
        """The model object to run for ``resolved`` (a name the registry resolved), with its adapter active."""
        if resolved.base != self.info.name:
            raise TunesmithError(f"{resolved.name} is based on {resolved.base}, not on {self.info.name}")
        if resolved.weights is None:
            if self._adapters:
                self.base_model.disable_adapters()
            return self.base_model, resolved
        if resolved.method == "full":
            key = str(resolved.weights)
            if key not in self._full:
                self._full[key] = load_model(BaseInfo(self.info.name, resolved.weights, self.info.end_of_turn)).eval()
            return self._full[key], resolved
        key = _adapter_key(str(resolved.weights))
        if key not in self._adapters:
            self.base_model.load_adapter(str(resolved.weights), adapter_name=key)
            self._adapters.add(key)
        self.base_model.set_adapter(key)
        self.base_model.enable_adapters()
        return self.base_model, resolved

    def _prompt_ids(self, resolved, conversation: list[dict] | str) -> list[int]:
        if isinstance(conversation, str):  # raw prompt (completion-style use)
            return self.tokenizer(conversation, add_special_tokens=True)["input_ids"]
        if resolved.format == "completion":
            # A completion-tuned model answers the raw text of the last user message.
            return self.tokenizer(conversation[-1]["content"], add_special_tokens=True)["input_ids"]
        return self.renderer.encode_prompt(conversation)

    def _fitted(self, prompts: list[list[int]], sampling: Sampling, param: str) -> Sampling:
        """``sampling`` with a max_tokens that fits every prompt's context; else ContextLengthExceeded."""
        longest = max(len(p) for p in prompts)
        room = self.context - longest
        if room < 1 or (sampling.max_tokens > room and not sampling.fit_to_context):
            raise ContextLengthExceeded(self.context, longest, sampling.max_tokens, param)
        return replace(sampling, max_tokens=min(sampling.max_tokens, room))

    def _inputs(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        return left_padded(rows, self.tokenizer.pad_token_id)

    def _generate_kwargs(self, sampling: Sampling) -> dict:
        kwargs = {"max_new_tokens": sampling.max_tokens, "eos_token_id": self._stop_ids,
                  "pad_token_id": self.tokenizer.pad_token_id, "do_sample": sampling.temperature > 0}
        if sampling.stop:  # stops generating at once; _reply cuts the stop text off
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        return kwargs

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _reply(self, prompt_tokens: int, ids: list[int], stops: tuple[str, ...]) -> Reply:
        """The reply in the generated ids: where it ended, and why.

        In a batch, a finished row goes on with padding, so the end is found again here."""
        end = next((i + 1 for i, t in enumerate(ids) if t in self._stop_ids), None)
        ids = ids[:end]
        text = self._decode(ids)
        cut = _first_stop(text, stops)
        if cut is None:
            return Reply(text, prompt_tokens, len(ids), "stop" if end else "length")
        # Generation stopped at the token that completed the stop string: the shortest prefix holding it.
        n = 1 + bisect_left(range(1, len(ids) + 1), True,
                            key=lambda k: _first_stop(self._decode(ids[:k]), stops) is not None)
        return Reply(text[:cut], prompt_tokens, n, "stop")

    @torch.inference_mode()
    def generate(self, model: ResolvedModel, conversations: list[list[dict] | str],
                 sampling: Sampling | None = None, batch_size: int = 8,
                 cancel: threading.Event | None = None) -> list[Reply]:
        """Answer many conversations (or raw prompts) with one model, batched.

        Setting ``cancel`` (the client went away) ends the generation at the next token and raises
        ``Cancelled``."""
        sampling = sampling or Sampling()
        selected, resolved = self.select(model)
        prompts = [self._prompt_ids(resolved, c) for c in conversations]
        sampling = self._fitted(prompts, sampling, _param(conversations[0]))
        replies: list[Reply] = []
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start : start + batch_size]
            inputs = self._inputs(rows)
            kwargs = self._generate_kwargs(sampling)
            if cancel is not None:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_Abort(cancel)])
            out = selected.generate(**inputs, **kwargs)
            if cancel is not None and cancel.is_set():
                raise Cancelled
            new = out[:, inputs["input_ids"].shape[1] :].tolist()
            replies += [self._reply(len(p), ids, sampling.stop) for p, ids in zip(rows, new)]
        return replies

    def stream(self, model: ResolvedModel, conversation: list[dict] | str,
               sampling: Sampling | None = None) -> Iterator[str | Reply]:
        """Yield the reply piece by piece as it is generated, then one ``Reply`` with the whole of it.

        The pieces join up to exactly ``Reply.text``. Closing the iterator early stops the generation."""
        sampling = sampling or Sampling()
        selected, resolved = self.select(model)
        prompt = self._prompt_ids(resolved, conversation)
        sampling = self._fitted([prompt], sampling, _param(conversation))
        feed = _TokenFeed()
        kwargs = {**self._inputs([prompt]), **self._generate_kwargs(sampling), "streamer": feed}
        worker = threading.Thread(target=feed.run, args=(selected, kwargs), daemon=True)
        worker.start()
        ids: list[int] = []
        sent = 0
        try:
            while isinstance(token := feed.tokens.get(), int):
                ids.append(token)
                text = self._decode(ids)
                if _first_stop(text, sampling.stop) is not None:
                    break
                ready = len(text) - _undecided(text, sampling.stop)
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
            if isinstance(token, Exception):
                raise token
        finally:
            feed.cancelled.set()
            worker.join()
        reply = self._reply(len(prompt), ids, sampling.stop)
        if len(reply.text) > sent:
            yield reply.text[sent:]
        yield reply


class Cancelled(Exception):
    """The generation was abandoned: nobody waits for its answer."""


class _Cancelled(Exception):
    pass


class _Abort(StoppingCriteria):
    """Ends every row of a generation once ``cancel`` is set."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenFeed:
    """``generate``'s streamer: hands each new token id to a queue; aborts generation once cancelled."""

    def __init__(self):
        self.tokens: queue.Queue[int | Exception | None] = queue.Queue()  # None: generation ended
        self.cancelled = threading.Event()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.cancelled.is_set():
            raise _Cancelled
        if self._prompt_seen:  # generate's first put is the prompt
            for token in value.flatten().tolist():
                self.tokens.put(token)
        self._prompt_seen = True

    def end(self) -> None:
        self.tokens.put(None)

    def run(self, model, kwargs: dict) -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except _Cancelled:
            pass
        except Exception as exc:  # raised again on the consuming side
            self.tokens.put(exc)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in ``text``, if any does."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _undecided(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still change: the bytes of an incomplete character,
    or what may be the start of a stop string (which the reply must not show)."""
    incomplete = len(text) - len(text.rstrip("\ufffd"))
    if incomplete:
        return incomplete
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def _param(conversation: list[dict] | str) -> str:
    """The request field that holds the prompt: chat messages, or a completion's prompt."""
    return "prompt" if isinstance(conversation, str) else "messages"


def _adapter_key(path: str) -> str:
    return "a" + hashlib.sha1(path.encode()).hexdigest()[:16]
