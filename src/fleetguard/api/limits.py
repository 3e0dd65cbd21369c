"""Request body limits, as pure ASGI middleware.

Theory of operation: a request that declares its length (``Content-Length``) is refused up front if
it declares too much, before a byte of the body is read. A request that does not (chunked transfer
coding) is counted as it streams through, without buffering: once the count passes the limit, the
middleware stops reading and tells the application that the client went away
(``http.disconnect``), drops whatever the application answers to that, and answers 413 with problem
details itself. The application thus never sees more than ``limit`` bytes, and a request is never
buffered before its route has authenticated the caller (import routes read their body themselves).

Each route gets the default limit unless ``routes`` gives its path another (bulk import accepts far
more than a JSON request).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetguard.api.errors import BodyTooLarge
from fleetguard.api.problems import error_response

__all__ = ["BodyLimit"]

_DISCONNECT: Message = {"type": "http.disconnect"}


class BodyLimit:
    """Refuses request bodies larger than ``default`` bytes, or than ``routes[path]`` on that path."""

    def __init__(self, app: ASGIApp, *, default: int, routes: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.routes = dict(routes or {})

    def limit_for(self, path: str) -> int:
        """Return the body limit of ``path``: exact paths only, so that ``/v1/devices/import`` does not
        lend its large limit to ``/v1/devices/import/transitions`` (a device may be named ``import``)."""
        return self.routes.get(path.rstrip("/") or "/", self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await error_response(BodyTooLarge(limit), instance=scope["path"])(scope, receive, send)
            return
        meter = _Meter(receive, send, limit)
        try:
            await self.app(scope, meter.receive, meter.send)
        except ClientDisconnect:
            if not meter.exceeded:
                raise
        if meter.exceeded and not meter.started:
            await error_response(BodyTooLarge(limit), instance=scope["path"])(scope, receive, send)


class _Meter:
    """Counts body bytes on the way in; after the limit, fakes a disconnect and mutes the app."""

    __slots__ = ("_receive", "_send", "exceeded", "limit", "size", "started")

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.size = 0
        self.exceeded = False
        self.started = False

    async def receive(self) -> Message:
        if self.exceeded:
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.exceeded = True
                return _DISCONNECT
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded and not self.started:
            return  # the app is answering a body it never fully got; the 413 replaces that answer
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _declared_length(scope: Scope) -> int | None:
    """Return the Content-Length, or None if absent (the streamed count still applies)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            # An unparsable length is the server's to reject (h11 and httptools do); count instead.
            return int(text) if text.isdigit() else None
    return None
