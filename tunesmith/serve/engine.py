"""Generation on one base model: its adapters, its fully fine-tuned models, its schedulers.

The base model is loaded once; every LoRA model on it is a slot in the adapter cache and every
request a row of the base model's scheduler, whatever adapter it uses. A fully fine-tuned model has
weights of its own, so it gets its own scheduler, kept in a small LRU of its own.

``submit`` is the one way in: the API, the CLI's chat and evaluations all queue their answers with
it and get them back piece by piece (``stream``) or whole (``generate``).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from tunesmith.config import Settings, get_settings
from tunesmith.errors import TunesmithError
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.models.loading import BaseInfo, ensure_cached, load_model, load_renderer
from tunesmith.serve.adapters import AdapterCache
from tunesmith.serve.grammar import Grammars
from tunesmith.serve.lora import MultiLoRA, Routing
from tunesmith.serve.sampling import Answer, Reply, Row, Sampling
from tunesmith.serve.scheduler import Cancelled, Request, Scheduler

__all__ = ["Cancelled", "ContextLengthExceeded", "Engine", "Reply", "Sampling"]


class ContextLengthExceeded(TunesmithError):
    """The prompt, or the prompt and the answer asked for, do not fit in the model's context (OpenAI's words)."""

    code = "context_length_exceeded"

    def __init__(self, context: int, prompt: int, completion: int, param: str):
        where = "messages" if param == "messages" else "prompt"
        super().__init__(f"This model's maximum context length is {context} tokens. However, you requested "
                         f"{prompt + completion} tokens ({prompt} in the {where}, {completion} in the completion). "
                         f"Please reduce the length of the {where} or completion.")
        self.param = param


class Engine:
    def __init__(self, base: str, settings: Settings | None = None, status=None):
        self.settings = settings or get_settings()
        torch.set_num_threads(self.settings.threads)
        self.info = ensure_cached(base, self.settings, status=status)
        self.renderer = load_renderer(self.info)
        self.tokenizer = self.renderer.tokenizer
        self.base_model = load_model(self.info).eval()
        self.lora = MultiLoRA(self.base_model)
        self.adapters = AdapterCache(self.lora, self.settings.max_loras, self.settings.max_lora_bytes)
        self._stop_ids = self.renderer.stop_ids
        self.context = self.base_model.config.max_position_embeddings
        vocab = self.base_model.get_output_embeddings().weight.shape[0]
        self.grammars = Grammars(self.tokenizer, vocab, self._stop_ids)
        self.scheduler = self._scheduler(self.base_model, self.lora, self.info.name)
        self._full: OrderedDict[str, Scheduler] = OrderedDict()  # fully fine-tuned models, least recent first
        self._full_lock = threading.Lock()

    def _scheduler(self, model, lora, name: str) -> Scheduler:
        return Scheduler(model, lora, self.tokenizer, self.tokenizer.pad_token_id, self.settings.max_batch_size,
                         self.settings.prefill_tokens, name)

    def submit(self, model: ResolvedModel, prompt: list[dict] | str, sampling: Sampling,
               emit: Callable[[str | Reply | Exception], None], cancel: threading.Event | None = None,
               index: int = 0) -> None:
        """Queue one answer to ``prompt`` (a conversation or a raw text). ``emit`` receives the text
        pieces, then the ``Reply`` (or an exception), on the scheduler's thread. ``index`` tells the
        answers of one request apart (their seeds differ). Loading an adapter that is not resident and
        compiling a grammar happen here, on the caller's thread."""
        self._enqueue(model, self._prompt_ids(model, prompt), _param(prompt), sampling, emit, cancel, index)

    def _enqueue(self, model: ResolvedModel, ids: list[int], param: str, sampling: Sampling,
                 emit: Callable[[str | Reply | Exception], None], cancel: threading.Event | None, index: int) -> None:
        scheduler, slot, release = self._place(model)
        try:
            sampling = self._fitted(ids, sampling, param)
            grammar = None
            if sampling.response_format is not None:
                grammar = self.grammars.compile(sampling.response_format[1])
            seed = None if sampling.seed is None else sampling.seed + index
            answer = Answer(self.tokenizer, self._stop_ids, sampling, len(ids))
        except BaseException:
            release()
            raise

        def delivered(item: str | Reply | Exception) -> None:
            if not isinstance(item, str):
                release()
            emit(item)

        scheduler.submit(Request(ids, Row(sampling, seed, grammar), answer, slot, delivered,
                                 cancel or threading.Event()))

    def generate(self, model: ResolvedModel, conversations: list[list[dict] | str],
                 sampling: Sampling | None = None, cancel: threading.Event | None = None) -> list[Reply]:
        """Answer many conversations (or raw prompts) with one model, all in the running batch.

        Setting ``cancel`` (the client went away) ends every answer at the next step and raises ``Cancelled``."""
        sampling = sampling or Sampling()
        prompts = [(self._prompt_ids(model, c), _param(c)) for c in conversations]
        for ids, param in prompts:  # every prompt is checked before any starts
            self._fitted(ids, sampling, param)
        cancel = cancel or threading.Event()
        results: list[queue.SimpleQueue] = []
        try:
            for i, (ids, param) in enumerate(prompts):
                results.append(queue.SimpleQueue())
                self._enqueue(model, ids, param, sampling, results[-1].put, cancel, i)
            replies = []
            for result in results:
                while isinstance(item := result.get(), str):
                    pass
                if isinstance(item, Exception):
                    raise item
                replies.append(item)
            return replies
        except BaseException:
            cancel.set()
            raise

    def stream(self, model: ResolvedModel, conversation: list[dict] | str,
               sampling: Sampling | None = None) -> Iterator[str | Reply]:
        """Yield the reply piece by piece as it is generated, then one ``Reply`` with the whole of it.

        The pieces join up to exactly ``Reply.text``. Closing the iterator early stops the generation."""
        items: queue.SimpleQueue = queue.SimpleQueue()
        cancel = threading.Event()
        self.submit(model, conversation, sampling or Sampling(), items.put, cancel)
        try:
            while True:
                item = items.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Reply):
                    return
        finally:
            cancel.set()

    def exclusive(self, model: ResolvedModel, work: Callable[[object], object]) -> object:
        """``work(torch_model)`` with ``model``'s weights in effect for every row of any batch, run
        between two scheduler steps (an evaluation's loss)."""
        scheduler, slot, release = self._place(model)
        try:
            if scheduler.lora is None:
                return scheduler.call(lambda: work(scheduler.model))

            def routed():
                with scheduler.lora.routed(Routing.single(slot)):
                    return work(scheduler.model)

            return scheduler.call(routed)
        finally:
            release()

    def unload(self, model: ResolvedModel) -> None:
        """Forget a deleted model's weights."""
        if model.weights is None:
            return
        if model.method == "full":
            with self._full_lock:
                scheduler = self._full.pop(str(model.weights), None)
            if scheduler is not None:
                scheduler.close()
        else:
            self.adapters.unload(model.weights)

    def close(self) -> None:
        self.scheduler.close()
        with self._full_lock:
            for scheduler in self._full.values():
                scheduler.close()

    @property
    def load(self) -> int:
        return self.scheduler.load + sum(s.load for s in list(self._full.values()))

    def _place(self, model: ResolvedModel) -> tuple[Scheduler, int | None, Callable[[], None]]:
        """The scheduler and adapter slot that serve ``model``, and how to give the slot back."""
        if model.base != self.info.name:
            raise TunesmithError(f"{model.name} is based on {model.base}, not on {self.info.name}")
        if model.weights is None:
            return self.scheduler, None, _nothing
        if model.method == "full":
            return self._full_scheduler(str(model.weights)), None, _nothing
        slot = self.adapters.acquire(model.weights)
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                self.adapters.release(model.weights)

        return self.scheduler, slot, release

    def _full_scheduler(self, path: str) -> Scheduler:
        with self._full_lock:
            if path in self._full:
                self._full.move_to_end(path)
                return self._full[path]
            full = load_model(BaseInfo(self.info.name, path, self.info.end_of_turn)).eval()
            self._full[path] = scheduler = self._scheduler(full, None, path)
            while len(self._full) > self.settings.max_full_models:
                _, cold = next(iter(self._full.items()))
                if cold.load:
                    break  # in use: kept until it is idle
                self._full.popitem(last=False)
                cold.close()
            return scheduler

    def _prompt_ids(self, resolved: ResolvedModel, conversation: list[dict] | str) -> list[int]:
        if isinstance(conversation, str):  # raw prompt (completion-style use)
            return self.tokenizer(conversation, add_special_tokens=True)["input_ids"]
        if resolved.format == "completion":
            # A completion-tuned model answers the raw text of the last user message.
            return self.tokenizer(conversation[-1]["content"], add_special_tokens=True)["input_ids"]
        return self.renderer.encode_prompt(conversation)

    def _fitted(self, ids: list[int], sampling: Sampling, param: str) -> Sampling:
        """``sampling`` with a max_tokens that fits in the context after the prompt ``ids``; else
        ContextLengthExceeded."""
        room = self.context - len(ids)
        if room < 1 or (sampling.max_tokens > room and not sampling.fit_to_context):
            raise ContextLengthExceeded(self.context, len(ids), sampling.max_tokens, param)
        return replace(sampling, max_tokens=min(sampling.max_tokens, room))


def _nothing() -> None:
    pass


def _param(conversation: list[dict] | str) -> str:
    """The request field that holds the prompt: chat messages, or a completion's prompt."""
    return "prompt" if isinstance(conversation, str) else "messages"
