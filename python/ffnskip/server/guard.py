"""What stands between the network and the endpoints: the Host check (DNS rebinding),
the API key, the request-body limit and timeout (an ASGI middleware), and an HTTP
protocol for uvicorn that drops connections which never finish their request head
(slowloris).
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
from typing import Any, Awaitable, Callable, Dict, Iterable, Optional

from .schemas import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/health",)   # answered without the API key: liveness probes carry none
DEFAULT_MAX_BODY = 4 << 20
DEFAULT_BODY_SECONDS = 30.0
DEFAULT_HEAD_SECONDS = 10.0


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):   # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _reply(send: Callable[[Dict[str, Any]], Awaitable[None]], status: int, message: str, type_: str,
                 code: Optional[str], headers: Iterable[tuple] = ()) -> None:
    body = json.dumps(error_body(message, type_, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware, in this order: Host header (only loopback names when
    `loopback_only`), `Authorization: Bearer <api_key>` (when a key is set; /health
    stays open), then the body: at most `max_body` bytes (413 from Content-Length,
    before reading), read within `body_seconds` (else 408). The app receives the body
    in one message."""

    def __init__(self, app: Any, *, api_key: Optional[str] = None, loopback_only: bool = False,
                 max_body: int = DEFAULT_MAX_BODY, body_seconds: float = DEFAULT_BODY_SECONDS) -> None:
        self.app, self.api_key, self.loopback_only = app, api_key, loopback_only
        self.max_body, self.body_seconds = max_body, body_seconds

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.loopback_only and "host" in headers and _host_name(headers["host"]) not in LOOPBACK_NAMES:
            # a browser page whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name
            await _reply(send, 400, f"the Host header {headers['host']!r} is not a loopback name; this server "
                                    "listens on loopback only", "invalid_request_error", "invalid_host")
            return
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                what = "no API key given" if not given else "the API key is not valid"
                await _reply(send, 401, f"{what}: send 'Authorization: Bearer <key>'", "invalid_request_error",
                             "invalid_api_key", [(b"www-authenticate", b"Bearer")])
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                await _reply(send, 400, "bad Content-Length", "invalid_request_error", None)
                return
            if n > self.max_body:
                await _reply(send, 413, f"the request body has {n:,} bytes, more than the limit of {self.max_body:,}",
                             "invalid_request_error", "request_too_large")
                return
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_seconds
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await _reply(send, 408, f"the request body did not arrive within {self.body_seconds:g} s",
                             "invalid_request_error", "request_timeout")
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await _reply(send, 413, f"the request body is more than the limit of {self.max_body:,} bytes",
                             "invalid_request_error", "request_too_large")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def protocol_class(head_seconds: float = DEFAULT_HEAD_SECONDS, max_waiting: int = 128) -> Any:
    """uvicorn's h11 protocol plus two limits against half-open connections: a request
    head must arrive within `head_seconds` of the connection (or of the previous
    response), and at most `max_waiting` connections may be waiting for one: beyond
    that the oldest waiting connection is closed (a client that sends its request at
    once, as /health probes do, is never the oldest waiter for long)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: "collections.OrderedDict[Any, None]" = collections.OrderedDict()

    class GuardedH11Protocol(H11Protocol):   # type: ignore[misc, valid-type]
        _head_timer: Optional[asyncio.TimerHandle] = None

        def _wait_for_head(self) -> None:
            self._stop_waiting()
            self._head_timer = self.loop.call_later(head_seconds, self._head_timeout)
            waiting[self] = None
            while len(waiting) > max_waiting:
                oldest, _ = waiting.popitem(last=False)
                oldest._drop()

        def _stop_waiting(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            waiting.pop(self, None)

        def _head_timeout(self) -> None:
            self._head_timer = None
            self._drop()

        def _drop(self) -> None:
            self._stop_waiting()
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_head()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:   # a request head arrived
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._wait_for_head()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

    return GuardedH11Protocol
