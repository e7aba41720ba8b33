"""Engines for the API: one per base model, created on first use, never run on the event loop.

Each engine has one worker thread, and everything that touches the engine runs there: its
creation, every batch, every stream. The torch model and its active adapter are shared state, so
the single thread is the engine's lock; requests queue for it without holding any other thread,
and a request cancelled while it waits never runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import TypeVar

from tunesmith.config import Settings, get_settings
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.serve.engine import Engine, Reply, Sampling

T = TypeVar("T")


class _Slot:
    def __init__(self, base: str, settings: Settings):
        self.base, self.settings = base, settings
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{base}")
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """Only called on ``worker``, so the engine is created once."""
        if self._engine is None:
            self._engine = Engine(self.base, self.settings)
        return self._engine


class EnginePool:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._slots: dict[str, _Slot] = {}

    def _slot(self, base: str) -> _Slot:
        if base not in self._slots:
            self._slots[base] = _Slot(base, self.settings)
        return self._slots[base]

    async def complete(self, resolved: ResolvedModel, prompts: list[list[dict] | str],
                       sampling: Sampling) -> list[Reply]:
        """Answer the prompts (conversations or raw texts) in batches."""
        slot = self._slot(resolved.base)
        return await asyncio.wrap_future(
            slot.worker.submit(lambda: slot.engine().generate(resolved, prompts, sampling)))

    async def run(self, base: str, work: Callable[[Engine], T]) -> T:
        """Any other work on ``base``'s engine (an evaluation), in turn with its requests."""
        slot = self._slot(base)
        return await asyncio.wrap_future(slot.worker.submit(lambda: work(slot.engine())))

    async def stream(self, resolved: ResolvedModel, prompt: list[dict] | str,
                     sampling: Sampling) -> AsyncIterator[str | Reply]:
        """Text pieces as they are generated, then the whole ``Reply``.

        Leaving the iteration early (the client went away) stops the generation within a token."""
        slot = self._slot(resolved.base)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[str | Reply | Exception] = asyncio.Queue()
        stopped = threading.Event()

        def produce() -> None:
            try:
                if stopped.is_set():  # gone while waiting for its turn
                    return
                with closing(slot.engine().stream(resolved, prompt, sampling)) as pieces:
                    for item in pieces:
                        if stopped.is_set():
                            return
                        loop.call_soon_threadsafe(items.put_nowait, item)
            except Exception as exc:
                loop.call_soon_threadsafe(items.put_nowait, exc)

        slot.worker.submit(produce)
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
