"""HTTP connection limits that hold without a proxy in front: uvicorn's h11 protocol, bounded.

uvicorn's default parser (httptools) has no limit on a header block nor a deadline for one: a
client that sends headers for ever holds their bytes (64 MiB per connection was measured), and
one that sends a byte every few seconds, or nothing, holds its connection (and its file
descriptor) for ever. uvicorn's h11 protocol bounds the header block
(``h11_max_incomplete_event_size``: h11 refuses a receive buffer past it), but answers that, like
every protocol error, with 400, and its keep-alive timer is cancelled by any byte received. The
protocol here is h11's with these limits:

- **header block size** (``http_max_header_bytes``): past it, 431 and the connection closes;
- **header count** (``http_max_headers``): past it, 431;
- **header deadline** (``http_header_timeout_seconds``): a request's header block must arrive
  within this long of the connection opening, or of the previous response ending (the keep-alive
  idle time counts against it: an idle connection is closed at the keep-alive timeout, a slow one
  at this deadline whatever it trickles); past it, 408 and the connection closes;
- **open connections** (``http_max_connections``): one more is answered 503 and closed at once,
  before its request is read, so HTTP cannot take the process's file descriptors from gRPC and
  the metrics endpoint.

The body is the application's: it reads it within the call's deadline and the body timeout, and
at most the route's body limit (``apihelper.service.http.app``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_seconds: float
    keepalive_timeout_seconds: float
    max_connections: int


# How long a refused connection's incoming bytes are still read (and dropped) after its answer.
LINGER_SECONDS = 1.0
_BLOCK_END = re.compile(rb"\n\r?\n")  # the blank line after the headers (h11 takes a bare LF too)
# The key of a request's ``state`` (ASGI's ``scope["state"]``) under which the protocol leaves
# its connection's transport: a stream watches its client's progress on it
# (``apihelper.service.http.progress``) and aborts it when the client takes nothing.
TRANSPORT_STATE = "apihelper.transport"
_PHRASES = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def bounded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``limits`` (uvicorn's ``http`` option takes a class)."""

    class BoundedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._head: bytearray | None = bytearray()  # the header block so far; None: complete
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.app_state = {**self.app_state, TRANSPORT_STATE: transport}  # copied into each request's scope
            if len(self.connections) > limits.max_connections:
                self._refused = True
                log.warning("HTTP: %d connections open, the limit; one more refused", limits.max_connections)
                self._answer_and_close(503, b"too many connections\n")
                return
            self._await_headers(limits.header_timeout_seconds)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return  # a refused connection: what it still sends is dropped
            if self._head is not None and not self._header_block_ok(data):
                return
            super().data_received(data)

        def _header_block_ok(self, data: bytes) -> bool:
            """Follow the header block until its blank line: 431 once it is past the size or the
            count limit (before h11 or the application holds more of it)."""
            assert self._head is not None
            seen = len(self._head)
            self._head += data
            end = _BLOCK_END.search(self._head, max(0, seen - 3))
            block = self._head if end is None else self._head[: end.end()]
            if len(block) > limits.max_header_bytes:
                self._answer_and_close(431, b"the request's header block is too large\n")
                return False
            if block.count(b"\n") > limits.max_headers + 2:  # + the request line and the blank line
                self._answer_and_close(431, b"too many header fields\n")
                return False
            if end is not None:
                self._head = None
                self._stop_header_timer()
            return True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._head = bytearray()
                # The next request's headers: the keep-alive timeout while idle (uvicorn's timer,
                # which any byte cancels), this deadline however slowly they trickle.
                self._await_headers(max(limits.header_timeout_seconds, limits.keepalive_timeout_seconds))

        def _await_headers(self, seconds: float) -> None:
            self._stop_header_timer()
            self._header_timer = self.loop.call_later(seconds, self._headers_too_late)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self._head is None:
                return  # a request in progress: its body and answer are the application's
            self._answer_and_close(408, b"the request's headers did not arrive in time\n")

        def _answer_and_close(self, status: int, body: bytes) -> None:
            """A plain answer written straight to the socket (no request was parsed: h11 may be
            in an error state), then the connection closed: at once for writing, a moment later
            for reading (what arrives meanwhile is dropped), so that closing with unread bytes
            does not reset the connection before the client has read the answer."""
            self._refused = True
            self._stop_header_timer()
            head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            self.transport.write(head % (status, _PHRASES.get(status, b"Bad Request"), len(body)) + body)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return BoundedH11Protocol
