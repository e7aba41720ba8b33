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

from tunesmith.api.deps import client_gone, current_project, get_store, resolve_model
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
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
T = TypeVar("T")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class _Sampled(BaseModel):
    """Fields both endpoints share, bounded in the schema. Other OpenAI fields are accepted and ignored;
    null means the default."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: Annotated[str, Field(max_length=256)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = None
    seed: Seed | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @property
    def answers(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int | None, default_max_tokens: int, top_logprobs: int | None = None,
                 response_format: tuple[str, dict | None] | None = None) -> Sampling:
        """The engine's sampling settings; what the schema cannot say is checked here, a 400 naming its field."""
        if self.stream and top_logprobs is not None:
            raise ApiError(400, "Log-probabilities are returned without stream only; ask without stream.",
                           param="logprobs", code="unsupported_parameter")
        if self.stream and self.answers > 1:
            raise ApiError(400, "Streaming answers with n=1 only; ask without stream for several answers.",
                           param="n")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true.", param="stream_options")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(default_max_tokens if max_tokens is None else max_tokens,
                        1.0 if self.temperature is None else self.temperature,
                        1.0 if self.top_p is None else self.top_p, tuple(s for s in stops if s), self.seed,
                        fit_to_context=max_tokens is None, top_logprobs=top_logprobs,
                        response_format=response_format)


MaxTokens = Annotated[int, Field(ge=1)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict] | None = None


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: Annotated[str, Field(max_length=64)]
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: plain text, any JSON object, or JSON that validates against a schema."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    def constraint(self) -> tuple[str, dict | None] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ("json_object", None)
        if self.json_schema is None:
            raise ApiError(400, "response_format of type json_schema needs its json_schema.",
                           param="response_format.json_schema")
        return ("json_schema", self.json_schema.schema_)


class ChatRequest(_Sampled):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None  # the newer name of max_tokens
    tools: list[dict] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None

    def top(self) -> int | None:
        """How many alternatives to report per token (0: the chosen token's only); None: no log-probabilities."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true.", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict]:
        """The messages as the chat template renders them, normalised like training data."""
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


Prompt = Annotated[str, Field(min_length=1)]


class CompletionRequest(_Sampled):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: MaxTokens | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None  # the answer starts with its prompt (openai 0.28's CLI always asks so)
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) * self.answers > MAX_ANSWERS:
            raise ApiError(400, f"at most {MAX_ANSWERS} answers per request (prompts × n), asked "
                                f"{len(prompts) * self.answers}.", param="n")
        if self.suffix:
            raise ApiError(400, "suffix is not supported by this server.", param="suffix",
                           code="unsupported_parameter")
        if self.stream and len(prompts) > 1:
            raise ApiError(400, "Streaming answers one prompt only; ask without stream for several.",
                           param="prompt")
        return prompts


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]
    refusal: None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None


class CompletionLogprobs(BaseModel):
    """The legacy completions' shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


# With "stream": true the answer is server-sent events: "data: {chunk}" lines, then "data: [DONE]".
_STREAMED = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_STREAMED)
async def chat_completions(body: ChatRequest, request: Request, project: Project = Depends(current_project)):
    sampling = body.sampling(body.max_completion_tokens or body.max_tokens, 256, body.top(),
                             body.response_format.constraint() if body.response_format else None)
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
                "logprobs": _chat_logprobs(r), "finish_reason": r.finish_reason} for i, r in enumerate(replies)]
    return {**head, "choices": choices, "usage": _usage(replies, body.answers), "system_fingerprint": None}


@router.post("/v1/completions", response_model=Completion, responses=_STREAMED)
async def completions(body: CompletionRequest, request: Request, project: Project = Depends(current_project)):
    sampling = body.sampling(body.max_tokens, 16, body.logprobs)
    prompts = body.prompts()
    resolved = await _resolve(request, project, body.model)
    pool: EnginePool = request.app.state.engines
    head = {"id": make_id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": body.model}
    if body.stream:
        items = await _started(pool.stream(resolved, prompts[0], sampling))
        return _sse(_completion_chunks(items, prompts[0] if body.echo else ""), head, body.include_usage)
    # Choice i * n + j is the j-th answer to prompt i, as OpenAI orders them.
    asked = [p for p in prompts for _ in range(body.answers)]
    replies = await pool.complete(resolved, asked, sampling, partial(client_gone, request))
    choices = [{"text": (prompt if body.echo else "") + r.text, "index": i,
                "logprobs": _completion_logprobs(r, len(prompt) if body.echo else 0),
                "finish_reason": r.finish_reason} for i, (prompt, r) in enumerate(zip(asked, replies))]
    return {**head, "choices": choices, "usage": _usage(replies, body.answers)}


def _chat_logprobs(reply: Reply) -> dict | None:
    if reply.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                         "top_logprobs": [{"token": a, "logprob": b, "bytes": c} for a, b, c in t.top]}
                        for t in reply.logprobs], "refusal": None}


def _completion_logprobs(reply: Reply, offset: int) -> dict | None:
    if reply.logprobs is None:
        return None
    offsets = []
    for t in reply.logprobs:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in reply.logprobs], "token_logprobs": [t.logprob for t in reply.logprobs],
            "top_logprobs": [{a: b for a, b, _ in t.top} for t in reply.logprobs], "text_offset": offsets}


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


async def _completion_chunks(items: AsyncIterator[str | Reply], echo: str) -> AsyncIterator[dict | Reply]:
    if echo:
        yield {"text": echo, "index": 0, "logprobs": None, "finish_reason": None}
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
