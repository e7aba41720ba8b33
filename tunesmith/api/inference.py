"""OpenAI's inference endpoints: chat completions and (legacy) completions, whole or streamed.

Generation runs on the engines' own threads (``EnginePool``): the event loop only awaits it, so
other requests are answered while a model writes.
"""

from __future__ import annotations

import json
from functools import partial
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError
from tunesmith.jobs.store import Project, make_id
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.serve.engine import Reply, Sampling
from tunesmith.serve.pool import EnginePool

router = APIRouter()

# Limits on what one request may ask for (README: "Limits"); a larger value is a 400 naming the field.
MAX_N = 8  # answers per prompt
MAX_STOPS = 4  # as at OpenAI
MAX_STOP_CHARS = 256  # each stop string is searched for in the reply at every token
MAX_PROMPTS = 32  # prompts in one completions request
MAX_ANSWERS = 64  # prompts × n in one request
MAX_MESSAGES = 1024
MAX_TOP_LOGPROBS = 20  # OpenAI's bound; tunesmith returns no log-probabilities yet
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
T = TypeVar("T")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampled(BaseModel):
    """Fields both endpoints share. Other OpenAI fields are accepted and ignored; null means the default."""

    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @property
    def answers(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int | None, default_max_tokens: int, param: str = "max_tokens") -> Sampling:
        """The engine's sampling settings; a value out of range is a 400 naming its parameter."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        asked, max_tokens = max_tokens, default_max_tokens if max_tokens is None else max_tokens
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if not 0 <= temperature <= 2:
            raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}.", param="temperature")
        if not 0 <= top_p <= 1:
            raise ApiError(400, f"top_p must be between 0 and 1, got {top_p}.", param="top_p")
        if max_tokens < 1:
            raise ApiError(400, f"{param} must be at least 1, got {max_tokens}.", param=param)
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stops)}.", param="stop")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ApiError(400, f"each stop string may be at most {MAX_STOP_CHARS} characters long.", param="stop")
        if not 1 <= self.answers <= MAX_N:
            raise ApiError(400, f"n must be between 1 and {MAX_N}, got {self.n}.", param="n")
        if self.stream and self.answers > 1:
            raise ApiError(400, "Streaming answers with n=1 only; ask without stream for several answers.",
                           param="n")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true.", param="stream_options")
        return Sampling(max_tokens, temperature, top_p, tuple(s for s in stops if s), self.seed,
                        fit_to_context=asked is None)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict] | None = None


class ChatRequest(_Sampled):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def conversation(self) -> list[dict]:
        """The messages as the chat template renders them, normalised like training data."""
        if not self.messages:
            raise ApiError(400, "messages must not be empty.", param="messages")
        if len(self.messages) > MAX_MESSAGES:
            raise ApiError(400, f"messages may hold at most {MAX_MESSAGES} messages, got {len(self.messages)}.",
                           param="messages")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}.",
                           param="top_logprobs")
        if self.logprobs or self.top_logprobs:
            raise _no_logprobs("logprobs" if self.logprobs else "top_logprobs")
        if self.tools:
            raise ApiError(400, "Tools (function calling) are not supported by this server.", param="tools")
        conversation = []
        for i, m in enumerate(self.messages):
            parts = [m.content] if isinstance(m.content, str) else m.content or []
            if any(not isinstance(p, str) and (p.type != "text" or p.text is None) for p in parts):
                raise ApiError(400, "Only text content parts are supported.", param=f"messages.{i}.content")
            msg = {"role": "system" if m.role == "developer" else m.role,
                   "content": "".join(p if isinstance(p, str) else p.text for p in parts)}
            for key in ("name", "tool_call_id", "tool_calls"):
                if getattr(m, key) is not None:
                    msg[key] = getattr(m, key)
            conversation.append(msg)
        return conversation


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    max_tokens: int | None = None
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or not all(prompts):
            raise ApiError(400, "prompt must be a non-empty string or a non-empty list of them.", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"prompt may list at most {MAX_PROMPTS} prompts, got {len(prompts)}.", param="prompt")
        if len(prompts) * self.answers > MAX_ANSWERS:
            raise ApiError(400, f"at most {MAX_ANSWERS} answers per request (prompts × n), asked "
                                f"{len(prompts) * self.answers}.", param="n")
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise ApiError(400, f"logprobs must be between 0 and 5, got {self.logprobs}.", param="logprobs")
        if self.logprobs:
            raise _no_logprobs("logprobs")
        for field in ("echo", "suffix"):
            if getattr(self, field):
                raise ApiError(400, f"{field} is not supported by this server.", param=field,
                               code="unsupported_parameter")
        if self.stream and len(prompts) > 1:
            raise ApiError(400, "Streaming answers one prompt only; ask without stream for several.",
                           param="prompt")
        return prompts


def _no_logprobs(param: str) -> ApiError:
    return ApiError(400, "Log-probabilities are not supported by this server yet.", param=param,
                    code="unsupported_parameter")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, project: Project = Depends(current_project)):
    if body.max_completion_tokens is not None:  # the newer name of max_tokens
        sampling = body.sampling(body.max_completion_tokens, 256, "max_completion_tokens")
    else:
        sampling = body.sampling(body.max_tokens, 256)
    conversation = body.conversation()
    resolved = await _resolve(request, project, body.model)
    pool: EnginePool = request.app.state.engines
    head = {"id": make_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": body.model}
    if body.stream:
        items = await _started(pool.stream(resolved, conversation, sampling))
        return _sse(_chat_chunks(items), {**head, "object": "chat.completion.chunk", "system_fingerprint": None},
                    body.include_usage)
    replies = await pool.complete(resolved, [conversation] * body.answers, sampling,
                                  partial(client_gone, request))
    choices = [{"index": i, "message": {"role": "assistant", "content": r.text, "refusal": None},
                "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(replies)]
    return {**head, "choices": choices, "usage": _usage(replies, body.answers), "system_fingerprint": None}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, project: Project = Depends(current_project)):
    sampling = body.sampling(body.max_tokens, 16)
    prompts = body.prompts()
    resolved = await _resolve(request, project, body.model)
    pool: EnginePool = request.app.state.engines
    head = {"id": make_id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": body.model}
    if body.stream:
        items = await _started(pool.stream(resolved, prompts[0], sampling))
        return _sse(_completion_chunks(items), head, body.include_usage)
    # Choice i * n + j is the j-th answer to prompt i, as OpenAI orders them.
    replies = await pool.complete(resolved, [p for p in prompts for _ in range(body.answers)], sampling,
                                  partial(client_gone, request))
    choices = [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
               for i, r in enumerate(replies)]
    return {**head, "choices": choices, "usage": _usage(replies, body.answers)}


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects: the body is read, so the next ASGI message is the disconnect.
    (A streamed answer needs no watch: Starlette stops the stream when its client goes.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _resolve(request: Request, project: Project, name: str) -> ResolvedModel:
    return await run_in_threadpool(resolve_model, get_store(request), project, name)  # database and disk reads


def _usage(replies: list[Reply], n: int) -> dict:
    prompt = sum(r.prompt_tokens for r in replies[::n])  # a prompt is read once however many answers it gets
    completion = sum(r.completion_tokens for r in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _started(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """The stream with its first item already here, so that a model failing to load is a plain HTTP error."""
    first = await anext(items)

    async def chained() -> AsyncIterator[T]:
        async with aclosing(items):
            yield first
            async for item in items:
                yield item

    return chained()


async def _chat_chunks(items: AsyncIterator[str | Reply]) -> AsyncIterator[dict | Reply]:
    def choice(delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    yield choice({"role": "assistant", "content": ""})
    async for item in items:
        if isinstance(item, Reply):
            yield choice({}, item.finish_reason)
            yield item
        else:
            yield choice({"content": item})


async def _completion_chunks(items: AsyncIterator[str | Reply]) -> AsyncIterator[dict | Reply]:
    async for item in items:
        if isinstance(item, Reply):
            yield {"text": "", "index": 0, "logprobs": None, "finish_reason": item.finish_reason}
            yield item
        else:
            yield {"text": item, "index": 0, "logprobs": None, "finish_reason": None}


def _sse(choices: AsyncIterator[dict | Reply], head: dict, include_usage: bool) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: a chunk per choice, the usage chunk if asked, then [DONE]."""

    def event(data: dict) -> str:
        return f"data: {json.dumps(data)}\n\n"

    async def events() -> AsyncIterator[str]:
        usage = {"usage": None} if include_usage else {}
        try:
            async with aclosing(choices):
                async for item in choices:
                    if not isinstance(item, Reply):
                        yield event({**head, "choices": [item], **usage})
                    elif include_usage:
                        yield event({**head, "choices": [], "usage": _usage([item], 1)})
        except Exception as exc:  # the status line is already sent: the error can only travel as an event
            yield event({"error": {"message": f"internal error: {type(exc).__name__}: {exc}",
                                   "type": "server_error", "param": None, "code": None}})
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
