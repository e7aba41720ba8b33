"""Engines for the API: one per base model, created on first use, never run on the event loop.

A request's answers are queued on its engine's scheduler, which batches them with everyone
else's; the event loop only awaits them. Work that may block (loading a model or an adapter,
compiling a grammar, an evaluation) runs on worker threads.

The queue is bounded: past ``max_queued_requests`` requests waiting or running on one base model,
a new one is refused with ``Overloaded`` (the API's 429 with a Retry-After), so that under load
clients are told to come back instead of waiting ever longer. A request whose client goes away is
taken out of the batch at the next step, waiting or not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from tunesmith.config import Settings, get_settings
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.serve.engine import Engine, Reply, Sampling

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1  # a batch turns over within seconds: its answers end and free their rows


class Overloaded(Exception):
    def __init__(self, base: str, limit: int, retry_after: int):
        super().__init__(f"The server is busy: {limit} requests for {base} are already waiting or running "
                         f"(setting TUNESMITH_MAX_QUEUED_REQUESTS). Retry after {retry_after} s.")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class EnginePool:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._engines: dict[str, Future[Engine]] = {}
        self._lock = threading.Lock()
        self._admitted: dict[str, int] = {}  # requests waiting or running per base; changed on the event loop

    def admitted(self, base: str) -> int:
        """Requests for ``base`` waiting or running now."""
        return self._admitted.get(base, 0)

    def engine(self, base: str) -> Engine:
        """``base``'s engine, created by the first caller (blocking: call it off the event loop)."""
        with self._lock:
            future = self._engines.get(base)
            creator = future is None
            if creator:
                future = self._engines[base] = Future()
        if creator:
            try:
                future.set_result(Engine(base, self.settings))
            except BaseException as exc:
                with self._lock:
                    del self._engines[base]  # the next request tries again
                future.set_exception(exc)
        return future.result()

    @contextmanager
    def _admit(self, base: str) -> Iterator[None]:
        limit = self.settings.max_queued_requests
        if self._admitted.get(base, 0) >= limit:
            raise Overloaded(base, limit, RETRY_AFTER_SECONDS)
        self._admitted[base] = self._admitted.get(base, 0) + 1
        try:
            yield
        finally:
            self._admitted[base] -= 1

    async def complete(self, resolved: ResolvedModel, prompts: list[list[dict] | str], sampling: Sampling,
                       gone: Callable[[], Awaitable[None]] | None = None) -> list[Reply]:
        """Answer the prompts (conversations or raw texts); if ``gone`` completes first (the client left),
        stop generating and raise ``ClientGone``."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        with self._admit(resolved.base):
            engine = await loop.run_in_executor(None, self.engine, resolved.base)
            replies: list[asyncio.Future[Reply]] = [loop.create_future() for _ in prompts]
            for answer in replies:  # once one fails, the others' Cancelled is expected, not news
                answer.add_done_callback(lambda f: f.cancelled() or f.exception())

            def emit(answer: asyncio.Future[Reply], item: str | Reply | Exception) -> None:
                if not isinstance(item, str) and not answer.done():
                    (answer.set_exception if isinstance(item, Exception) else answer.set_result)(item)

            def submit_all() -> None:  # no thread waits for the answers: the scheduler's emit sets them
                for i, (prompt, answer) in enumerate(zip(prompts, replies)):
                    engine.submit(resolved, prompt, sampling, partial(loop.call_soon_threadsafe, emit, answer),
                                  cancel, index=i)

            try:
                await loop.run_in_executor(None, submit_all)
                return await _unless_gone(asyncio.gather(*replies), gone, cancel)
            finally:
                cancel.set()  # a failed or abandoned request's other answers leave the batch

    async def run(self, base: str, work: Callable[[Engine], T], gone: Callable[[], Awaitable[None]] | None = None) -> T:
        """Any other work on ``base``'s engine (an evaluation), on a worker thread. A client that leaves
        does not stop it: its answers are queued with everyone else's and run to their end."""
        loop = asyncio.get_running_loop()
        with self._admit(base):
            engine = await loop.run_in_executor(None, self.engine, base)
            return await _unless_gone(loop.run_in_executor(None, work, engine), gone, threading.Event())

    async def stream(self, resolved: ResolvedModel, prompt: list[dict] | str,
                     sampling: Sampling) -> AsyncIterator[str | Reply]:
        """Text pieces as they are generated, then the whole ``Reply``.

        Leaving the iteration early (the client went away) takes the answer out of the batch at the next step."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[str | Reply | Exception] = asyncio.Queue()
        cancel = threading.Event()
        with self._admit(resolved.base):
            engine = await loop.run_in_executor(None, self.engine, resolved.base)
            emit = partial(loop.call_soon_threadsafe, items.put_nowait)
            await loop.run_in_executor(None, partial(engine.submit, resolved, prompt, sampling, emit, cancel))
            try:
                while True:
                    item = await items.get()
                    if isinstance(item, Exception):
                        raise item
                    yield item
                    if isinstance(item, Reply):
                        return
            finally:
                cancel.set()

    def unload(self, resolved: ResolvedModel) -> None:
        """A model was deleted: drop its weights from its engine, if that engine is loaded."""
        future = self._engines.get(resolved.base)
        if future is not None and future.done() and future.exception() is None:
            future.result().unload(resolved)

    def close(self) -> None:
        """Stop every scheduler (for shutdown); answers under way end with ``Cancelled``."""
        for future in list(self._engines.values()):
            if future.done() and future.exception() is None:
                future.result().close()


async def _unless_gone(work: asyncio.Future[T], gone: Callable[[], Awaitable[None]] | None,
                       cancel: threading.Event) -> T:
    """``work``'s result, unless ``gone()`` completes first: then ``cancel`` is set (the answers leave the
    batch at the next step, or never start) and ``ClientGone`` is raised."""
    if gone is None:
        return await work
    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work in done:
        return work.result()
    cancel.set()
    work.add_done_callback(lambda f: f.cancelled() or f.exception())  # its Cancelled is expected, not news
    raise ClientGone
