"""The server's front door, passed before any route runs or any body is read.

In this order: the ``Host`` header must name this server (a web page that rebinds its own DNS
name to 127.0.0.1 sends its own name, so it cannot drive a local server); a ``/v1`` request must
carry a valid key (checked before its body is read: an unauthorised upload costs one header); and
the body may not exceed its limit: refused at once when ``Content-Length`` says so, and cut off
while it is read when it does not. Every refusal is OpenAI's error envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.api.errors import ApiError, envelope
from tunesmith.config import Settings
from tunesmith.errors import TunesmithError
from tunesmith.jobs.store import Project, Store

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOCAL_PROJECT = "local"
WILDCARD_BINDS = ("0.0.0.0", "::", "")
UPLOAD_OVERHEAD = 64 * 1024  # a multipart body's own headers and boundaries; the route checks the file exactly


@dataclass(frozen=True)
class Caller:
    project: Project
    admin: bool  # may manage keys


def check_binding(settings: Settings) -> None:
    """Keyless mode serves whoever can connect: only a loopback address keeps that to this machine."""
    if settings.keyless and settings.host not in LOOPBACK:
        raise TunesmithError(f"refusing keyless mode on {settings.host}: anyone who can reach it could use it. "
                         "Bind 127.0.0.1, or create a key with `tunesmith keys create --project NAME`.")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names accepted; None: any (a wildcard bind without a list: keys guard it, not names)."""
    if settings.allowed_hosts.strip():
        names = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        return None if "*" in names else frozenset(names)
    if settings.host in WILDCARD_BINDS:
        return None
    return frozenset({settings.host.lower(), *LOOPBACK})


def host_name(header: str) -> str:
    """``example.com:8000`` → ``example.com``; ``[::1]:8000`` → ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    return header.rpartition(":")[0].lower() if header.count(":") == 1 else header.lower()


class Gate:
    def __init__(self, app: ASGIApp, store: Store):
        self.app, self.store, self.settings = app, store, store.settings
        self.hosts = allowed_hosts(store.settings)
        self._local: Project | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        limit = self._body_limit(scope)
        try:
            self._check_host(headers)
            if scope["path"].startswith("/v1/"):
                scope.setdefault("state", {})["caller"] = await run_in_threadpool(self._caller, headers)
            self._check_length(headers, limit)
        except ApiError as exc:
            return await envelope(exc)(scope, receive, send)
        body = _LimitedBody(scope, receive, send, limit)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if not body.refused:  # else: the app only failed to read the body it was denied
                raise

    def _check_host(self, headers: Headers) -> None:
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            raise ApiError(421, f"Host {headers.get('host', '')!r} is not served here; allowed: "
                                f"{', '.join(sorted(self.hosts))} (setting TUNESMITH_ALLOWED_HOSTS).",
                           code="host_not_allowed")

    def _caller(self, headers: Headers) -> Caller:
        if self.settings.keyless:  # the machine's one user, who also manages its keys
            if self._local is None:
                with self.store.session() as s:
                    self._local = self.store.project(s, LOCAL_PROJECT)
            return Caller(self._local, admin=True)
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer KEY' "
                                "(create one with `tunesmith keys create --project NAME`).",
                           "authentication_error", code="missing_api_key")
        found = self.store.caller(key.strip())
        if found is None:
            raise ApiError(401, "Incorrect API key provided.", "authentication_error", code="invalid_api_key")
        return Caller(*found)

    def _body_limit(self, scope: Scope) -> tuple[int, int]:
        """The limit to name, and the bytes allowed: an upload's multipart wrapping is allowed on top."""
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
            return self.settings.max_upload_bytes, self.settings.max_upload_bytes + UPLOAD_OVERHEAD
        return self.settings.max_body_bytes, self.settings.max_body_bytes

    def _check_length(self, headers: Headers, limit: tuple[int, int]) -> None:
        declared = headers.get("content-length")
        if declared is None:
            return
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes.", code="invalid_value")
        if int(declared) > limit[1]:
            raise too_large(limit[0])


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is larger than the limit of {limit:,} bytes (settings "
                         "TUNESMITH_MAX_UPLOAD_BYTES for files, TUNESMITH_MAX_BODY_BYTES otherwise).",
                    code="request_too_large")


class _LimitedBody:
    """``receive`` and ``send`` for the app: past ``limit`` bytes of body, the client gets the 413 and
    the app a disconnect, so it stops reading; whatever the app answers after that is dropped."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: tuple[int, int]):
        self.scope, self._receive, self._send, (self.named, self.allowed) = scope, receive, send, limit
        self.read, self.refused = 0, False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.refused:
            self.read += len(message.get("body", b""))
            if self.read > self.allowed:
                self.refused = True
                await envelope(too_large(self.named))(self.scope, self._receive, self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if not self.refused:
            await self._send(message)
