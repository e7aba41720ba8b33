"""OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from tunesmith.errors import TunesmithError, UnknownModelError
from tunesmith.jobs.lifecycle import InvalidTransition
from tunesmith.serve.pool import ClientGone, Overloaded


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# Declared on every route: any 4xx answer is this envelope.
ERROR_RESPONSES = {"4XX": {"model": ErrorEnvelope, "description": "OpenAI's error envelope"}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    """What an unknown object and another project's object both look like: the same 404."""
    return ApiError(404, f"No such {kind}: {object_id}", param=param)


def model_not_found(name: str, param: str = "model") -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", param=param,
                    code="model_not_found")


def _envelope(status: int, message: str, type: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status,
                        headers=headers)


def envelope(exc: ApiError) -> JSONResponse:
    return _envelope(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 421: "invalid_request_error", 422: "invalid_request_error",
          429: "requests"}


# pydantic names the member of a union that a value failed ("int", "literal['auto']", "list[str]") as
# if it were a field: those are not part of the request's field path.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|dict|list|constrained-[\w-]+)$|[\[(]")


def _first_problem(errors: list[dict]) -> tuple[str | None, str]:
    """The field path of the first invalid field and what is wrong with it (every way its union allows)."""
    def path(error: dict) -> str:
        return ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")
                        and not (isinstance(p, str) and _UNION_MEMBER.search(p)))

    if not errors:
        return None, "invalid request"
    param = path(errors[0])
    messages = dict.fromkeys(e.get("msg", "invalid") if path(e) == param else f"{path(e)}: {e.get('msg', 'invalid')}"
                             for e in errors if path(e) == param or path(e).startswith(f"{param}."))
    return param or None, " or ".join(messages)


def _allowed(request: Request) -> str:
    """Every method the request's path answers to. Starlette's own 405 names only those of the first
    route that matched the path, and FastAPI makes a route per method."""
    methods = set()
    for route in request.app.routes:  # a path match with another method is a partial match
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return envelope(exc)

    @app.exception_handler(UnknownModelError)
    async def _model(_: Request, exc: UnknownModelError):
        return _envelope(404, str(exc), "invalid_request_error", "model", "model_not_found")

    @app.exception_handler(InvalidTransition)
    async def _state(_: Request, exc: InvalidTransition):
        return _envelope(400, str(exc), "invalid_request_error", None, "invalid_state")

    @app.exception_handler(Overloaded)
    async def _busy(_: Request, exc: Overloaded):
        return _envelope(429, str(exc), "requests", None, "rate_limit_exceeded",
                         {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone):  # nobody reads it: nginx's "client closed request"
        return _envelope(499, "The client closed the connection; its generation was stopped.", "invalid_request_error")

    @app.exception_handler(TunesmithError)
    async def _user(_: Request, exc: TunesmithError):
        return _envelope(400, str(exc), "invalid_request_error", exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        # 400, as OpenAI answers a field out of its schema (FastAPI's own default is 422)
        param, message = _first_problem(exc.errors())
        return _envelope(400, f"{param}: {message}" if param else message, "invalid_request_error", param,
                         "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        headers = {"Allow": _allowed(request)} if exc.status_code == 405 else exc.headers
        return _envelope(exc.status_code, str(exc.detail), _TYPES.get(exc.status_code, "server_error"),
                         headers=headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception):
        return _envelope(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
