"""Continuous batching: one thread owns a model and runs every request for it, many at a time.

Each turn of the loop: run any exclusive work (an evaluation's loss), drop what was cancelled,
advance the prefill of newly arrived prompts by one chunk, then run one decode step for every
running answer. A request joins the running batch as soon as its prompt is read and leaves it the
step it ends, so nobody waits for a whole batch to finish, and a long prompt is read a chunk per
turn between decode steps instead of stalling everyone's next token.

The running batch is a left-padded batch with one KV cache (transformers' ``DynamicCache``): rows
of different lengths are aligned on the right, and an attention mask hides each row's padding.
Joining pads the shorter side on the left and concatenates; leaving selects the remaining rows and
cuts padding no row needs any more. Copies happen only when the batch changes, not every step.

Why not transformers' own continuous batching (``init_continuous_batching``): it takes one
generation config for all requests and one model without per-request adapters, and its paged
attention path is built for accelerators. Here every row has its own adapter, sampling settings,
random generator, grammar and stop strings, so the loop is ours and the model forward is theirs.
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunesmith.serve.lora import MultiLoRA, Routing
from tunesmith.serve.sampling import Answer, Reply, Row, logprobs_of


class Cancelled(Exception):
    """The generation was abandoned: nobody waits for its answer."""


@dataclass(eq=False)
class Request:
    prompt: list[int]
    row: Row
    answer: Answer
    slot: int | None  # adapter slot; None: the base model
    emit: Callable[[str | Reply | Exception], None]  # called on the scheduler thread; must not block
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Prefill:
    """Newly arrived prompts being read, left-padded into one matrix, a chunk of columns at a time."""

    requests: list[Request]
    ids: torch.Tensor  # [rows, longest prompt]
    mask: torch.Tensor
    done: int = 0  # columns read so far
    cache: DynamicCache = field(default_factory=DynamicCache)


class Scheduler:
    def __init__(self, model, lora: MultiLoRA | None, tokenizer, pad_id: int, max_batch: int,
                 prefill_tokens: int, name: str):
        self.model, self.lora, self.tokenizer, self.pad_id = model, lora, tokenizer, pad_id
        self.max_batch, self.prefill_tokens, self.name = max_batch, prefill_tokens, name
        self._waiting: deque[Request] = deque()
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # the running batch (touched on the scheduler thread only)
        self._running: list[Request] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._last = torch.zeros(0, 1, dtype=torch.long)  # each running row's newest token
        self._prefill: _Prefill | None = None
        self._routings: dict[tuple, Routing] = {}
        self.steps = 0  # decode steps run, for tests and the benchmark

    def submit(self, request: Request) -> None:
        with self._wake:
            if self._closed:
                raise Cancelled
            self._waiting.append(request)
            self._start()
            self._wake.notify()

    def call(self, work: Callable[[], object]) -> object:
        """Run ``work`` on the scheduler thread between two steps (the batch waits for it) and return its
        result: for work that needs the model to itself, like an evaluation's loss."""
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise Cancelled
            self._calls.append((work, future))
            self._start()
            self._wake.notify()
        return future.result()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def load(self) -> int:
        """Requests waiting or running."""
        prefilling = len(self._prefill.requests) if self._prefill else 0
        return len(self._waiting) + prefilling + len(self._running)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"scheduler-{self.name}", daemon=True)
            self._thread.start()
            atexit.register(self.close)  # a thread killed inside torch at exit aborts the process noisily

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._calls or self._running or self._prefill):
                    self._wake.wait()
                if self._closed:
                    break
                calls, self._calls = list(self._calls), deque()
            for work, future in calls:
                try:
                    future.set_result(work())
                except BaseException as exc:  # handed to the caller, whose fault it is
                    future.set_exception(exc)
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # a fault in the model fails the requests in the batch, never the loop
                for request in self._in_flight():
                    request.emit(exc)
                self._reset()
        for request in self._in_flight() + list(self._waiting):
            request.emit(Cancelled())
        for _, future in self._calls:
            future.set_exception(Cancelled())

    def _in_flight(self) -> list[Request]:
        return self._running + (self._prefill.requests if self._prefill else [])

    def _reset(self) -> None:
        self._running, self._cache, self._prefill = [], None, None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._last = torch.zeros(0, 1, dtype=torch.long)

    def _step(self) -> None:
        self._drop_cancelled()
        if self._prefill is None:
            self._prefill = self._admit()
        if self._prefill is not None:
            self._advance_prefill()
        if self._running:
            self._decode()

    def _drop_cancelled(self) -> None:
        with self._wake:
            for request in [r for r in self._waiting if r.cancel.is_set()]:
                self._waiting.remove(request)
                request.emit(Cancelled())
        gone = [i for i, r in enumerate(self._running) if r.cancel.is_set()]
        for i in gone:
            self._running[i].emit(Cancelled())
        self._remove(gone)

    def _admit(self) -> _Prefill | None:
        """Take waiting prompts into a new prefill, as many as the batch has room for, the first always."""
        with self._wake:
            room = self.max_batch - len(self._running)
            group: list[Request] = []
            while self._waiting and len(group) < room:
                longest = max([len(self._waiting[0].prompt)] + [len(r.prompt) for r in group])
                if group and longest * (len(group) + 1) > self.prefill_tokens:
                    break
                group.append(self._waiting.popleft())
        if not group:
            return None
        longest = max(len(r.prompt) for r in group)
        ids = torch.full((len(group), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, longest - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, longest - len(r.prompt) :] = 1
        return _Prefill(group, ids, mask)

    def _advance_prefill(self) -> None:
        p = self._prefill
        width = max(16, self.prefill_tokens // len(p.requests))
        end = min(p.ids.shape[1], p.done + width)
        positions = (p.mask.cumsum(1) - 1).clamp(min=0)
        logits = self._forward([r.slot for r in p.requests], p.ids[:, p.done : end], p.mask[:, :end],
                               positions[:, p.done : end], p.cache)
        p.done = end
        if end < p.ids.shape[1]:
            return
        self._prefill = None
        tokens = self._choose(p.requests, logits)
        self._join(p.requests, p.cache, p.mask, tokens)

    def _decode(self) -> None:
        self._mask = torch.cat([self._mask, torch.ones(len(self._running), 1, dtype=torch.long)], 1)
        positions = (self._mask.sum(1, keepdim=True) - 1)
        logits = self._forward([r.slot for r in self._running], self._last, self._mask, positions, self._cache)
        self.steps += 1
        tokens = self._choose(self._running, logits)
        self._last = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
        self._remove([i for i, r in enumerate(self._running) if r.answer.finish_reason])

    def _forward(self, slots: list[int | None], ids, mask, positions, cache) -> torch.Tensor:
        routing = self._routings.get(tuple(slots))
        if routing is None:  # kept while the batch keeps its rows: the layers' masks are built once
            if len(self._routings) >= 4:
                self._routings.clear()
            routing = self._routings[tuple(slots)] = Routing.of(slots)
        if self.lora is None:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        else:
            with self.lora.routed(routing):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _choose(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        """Each row's next token, added to its answer and sent on; a row whose choice fails ends with the
        error (its request alone)."""
        wanted = [r.answer.sampling.top_logprobs is not None for r in requests]
        logprobs = torch.log_softmax(logits, -1) if any(wanted) else None
        tokens = []
        for i, request in enumerate(requests):
            try:
                token = request.row.choose(logits[i], request.answer)
                request.row.accept(token)
                info = (logprobs_of(self.tokenizer, logprobs[i], token, request.answer.sampling.top_logprobs)
                        if wanted[i] else None)
                piece = request.answer.add(token, info)
            except Exception as exc:
                request.answer.finish_reason = "error"
                request.emit(exc)
                tokens.append(self.pad_id)
                continue
            if piece:
                request.emit(piece)
            if request.answer.finish_reason:
                request.emit(request.answer.reply())
            tokens.append(token)
        return tokens

    def _join(self, requests: list[Request], cache: DynamicCache, mask: torch.Tensor, tokens: list[int]) -> None:
        """Add freshly prefilled rows to the running batch (those not already finished)."""
        keep = [i for i, r in enumerate(requests) if not r.answer.finish_reason]
        if not keep:
            return
        index = torch.tensor(keep)
        requests = [requests[i] for i in keep]
        new_last = torch.tensor([tokens[i] for i in keep], dtype=torch.long).unsqueeze(1)
        mask = mask.index_select(0, index)
        if not self._running:
            for layer in cache.layers:
                layer.batch_select_indices(index)
            self._cache, self._mask, self._last, self._running = cache, mask, new_last, requests
            return
        width = max(self._mask.shape[1], mask.shape[1])
        merged = DynamicCache()
        for old, new in zip(self._cache.layers, cache.layers):
            layer = DynamicLayer()
            layer.update(torch.cat([_left_pad(old.keys, width), _left_pad(new.keys.index_select(0, index), width)]),
                         torch.cat([_left_pad(old.values, width),
                                    _left_pad(new.values.index_select(0, index), width)]))
            merged.layers.append(layer)
        self._cache = merged
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self._last = torch.cat([self._last, new_last])
        self._running += requests

    def _remove(self, rows: list[int]) -> None:
        """Take finished rows out of the batch, and the padding columns no remaining row needs."""
        if not rows:
            return
        keep = [i for i in range(len(self._running)) if i not in set(rows)]
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep)
        self._mask, self._last = self._mask.index_select(0, index), self._last.index_select(0, index)
        unused = int((self._mask.cumsum(1) == 0).all(0).sum())
        self._mask = self._mask[:, unused:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, unused:]
            layer.values = layer.values.index_select(0, index)[:, :, unused:]


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``t`` with zeros in front along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)
