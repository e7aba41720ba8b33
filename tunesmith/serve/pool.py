"""Engines for the API: one per base model, created on first use, never run on the event loop.

Each engine has one worker thread, and everything that touches the engine runs there: its
creation, every batch, every stream. The torch model and its active adapter are shared state, so
the single thread is the engine's lock; requests queue for it without holding any other thread,
and a request cancelled while it waits never runs.

The queue is bounded: past ``max_queued_requests`` requests waiting or running on one base model,
a new one is refused with ``Overloaded`` (the API's 429, with a Retry-After from the mean time a
request has taken), so that under load clients are told to come back instead of waiting ever longer.
A request whose client goes away stops its generation at the next token, waiting or not.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import TypeVar

from tunesmith.config import Settings, get_settings
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.serve.engine import Engine, Reply, Sampling

T = TypeVar("T")


class Overloaded(Exception):
    def __init__(self, base: str, limit: int, retry_after: int):
        super().__init__(f"The server is busy: {limit} requests for {base} are already waiting or running "
                         f"(setting TUNESMITH_MAX_QUEUED_REQUESTS). Retry after {retry_after} s.")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class _Slot:
    def __init__(self, base: str, settings: Settings):
        self.base, self.settings = base, settings
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{base}")
        self._engine: Engine | None = None
        self.admitted = 0  # requests waiting or running; changed on the event loop only
        self.mean_seconds = 1.0  # moving average of a request's time on the engine

    def engine(self) -> Engine:
        """Only called on ``worker``, so the engine is created once."""
        if self._engine is None:
            self._engine = Engine(self.base, self.settings)
        return self._engine

    def submit(self, work: Callable[[Engine], T]) -> Future[T]:
        def timed() -> T:
            started = time.monotonic()
            try:
                return work(self.engine())
            finally:
                self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.monotonic() - started)

        return self.worker.submit(timed)


class EnginePool:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._slots: dict[str, _Slot] = {}

    def _slot(self, base: str) -> _Slot:
        if base not in self._slots:
            self._slots[base] = _Slot(base, self.settings)
        return self._slots[base]

    def admitted(self, base: str) -> int:
        """Requests for ``base`` waiting or running now."""
        return self._slots[base].admitted if base in self._slots else 0

    @contextmanager
    def _admit(self, slot: _Slot) -> Iterator[None]:
        limit = self.settings.max_queued_requests
        if slot.admitted >= limit:
            raise Overloaded(slot.base, limit, max(1, math.ceil(slot.mean_seconds)))
        slot.admitted += 1
        try:
            yield
        finally:
            slot.admitted -= 1

    async def complete(self, resolved: ResolvedModel, prompts: list[list[dict] | str], sampling: Sampling,
                       gone: Callable[[], Awaitable[None]] | None = None) -> list[Reply]:
        """Answer the prompts (conversations or raw texts) in batches; if ``gone`` completes first (the
        client left), stop generating and raise ``ClientGone``."""
        slot = self._slot(resolved.base)
        cancel = threading.Event()
        with self._admit(slot):
            work = slot.submit(lambda engine: engine.generate(resolved, prompts, sampling, cancel=cancel))
            return await _unless_gone(work, gone, cancel)

    async def run(self, base: str, work: Callable[[Engine], T], gone: Callable[[], Awaitable[None]] | None = None) -> T:
        """Any other work on ``base``'s engine (an evaluation), in turn with its requests. A client that
        leaves only stops it from starting: work under way runs to its end."""
        slot = self._slot(base)
        with self._admit(slot):
            return await _unless_gone(slot.submit(work), gone, threading.Event())

    async def stream(self, resolved: ResolvedModel, prompt: list[dict] | str,
                     sampling: Sampling) -> AsyncIterator[str | Reply]:
        """Text pieces as they are generated, then the whole ``Reply``.

        Leaving the iteration early (the client went away) stops the generation within a token."""
        slot = self._slot(resolved.base)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[str | Reply | Exception] = asyncio.Queue()
        stopped = threading.Event()

        def produce(engine: Engine) -> None:
            try:
                if stopped.is_set():  # gone while waiting for its turn
                    return
                with closing(engine.stream(resolved, prompt, sampling)) as pieces:
                    for item in pieces:
                        if stopped.is_set():
                            return
                        loop.call_soon_threadsafe(items.put_nowait, item)
            except Exception as exc:
                loop.call_soon_threadsafe(items.put_nowait, exc)

        with self._admit(slot):
            slot.submit(produce)
            try:
                while True:
                    item = await items.get()
                    if isinstance(item, Exception):
                        raise item
                    yield item
                    if isinstance(item, Reply):
                        return
            finally:
                stopped.set()

    def close(self) -> None:
        """Drop the queued work (for shutdown); a generation under way runs to its end."""
        for slot in self._slots.values():
            slot.worker.shutdown(wait=False, cancel_futures=True)


async def _unless_gone(work: Future[T], gone: Callable[[], Awaitable[None]] | None,
                       cancel: threading.Event) -> T:
    """``work``'s result, unless ``gone()`` completes first: then ``cancel`` is set (the engine stops at
    its next token, or never starts) and ``ClientGone`` is raised."""
    result = asyncio.wrap_future(work)
    if gone is None:
        return await result
    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if result in done:
        return result.result()
    cancel.set()
    work.cancel()  # if it has not started yet
    result.add_done_callback(lambda f: f.cancelled() or f.exception())  # its Cancelled is expected, not news
    raise ClientGone
