"""A hostile gRPC client on raw HTTP/2 frames (the ``h2`` package): what grpcio's own client never
does. It opens streams with a zero flow-control window and never reads, sends a deadline of its
choosing, or sends bytes that are not the message its method expects.

Each client is one TCP connection. ``open_streams`` writes HEADERS and the framed request for
each stream and, unless asked to read, never touches the socket again: the server's DATA, its
pings and its RST_STREAMs pile up unread, as with a peer that stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def grpc_frame(message: bytes) -> bytes:
    """``message`` in gRPC's length-prefixed framing (uncompressed)."""
    return struct.pack(">?I", False, len(message)) + message


@dataclass
class StreamResult:
    """What came back on one stream, when the client reads."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # the RST_STREAM error code
    ended: bool = False


class RawH2Client:
    """One HTTP/2 connection to ``host:port`` speaking gRPC by hand."""

    def __init__(self, host: str, port: int, *, initial_window: int = 65_535) -> None:
        self._host = host
        self._port = port
        self._initial_window = initial_window
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.results: dict[int, StreamResult] = {}
        self.goaway = False  # the server sent GOAWAY
        self.closed = False  # the server closed the TCP connection

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._initial_window}
        )
        self._conn.initiate_connection()
        await self._flush()

    async def _flush(self) -> None:
        assert self._writer is not None
        data = self._conn.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def open_streams(
        self,
        method: str,
        body: bytes,
        count: int,
        *,
        timeout: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        """Open ``count`` calls of ``method`` (``/package.Service/Method``), each sending ``body``
        (already gRPC-framed) and half-closing; ``timeout`` is the raw ``grpc-timeout`` value."""
        ids = []
        for _ in range(count):
            stream_id = self._conn.get_next_available_stream_id()
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", f"{self._host}:{self._port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
            if timeout is not None:
                headers.append(("grpc-timeout", timeout))
            headers.extend(metadata)
            self._conn.send_headers(stream_id, headers)
            self._conn.send_data(stream_id, body, end_stream=True)
            self.results[stream_id] = StreamResult()
            ids.append(stream_id)
        await self._flush()
        return ids

    async def read_until_done(self, stream_ids: Sequence[int], seconds: float) -> None:
        """Read (acknowledging data, so the window reopens) until every stream in ``stream_ids``
        ended or was reset, the server closed the connection, or ``seconds`` passed."""
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        pending = set(stream_ids)
        while pending and loop.time() < deadline:
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    chunk = await self._reader.read(65_536)
            except TimeoutError:
                break
            if not chunk:
                self.closed = True
                break
            if self.goaway:
                continue  # h2 refuses frames after GOAWAY; only the close is awaited now
            try:
                events = self._conn.receive_data(chunk)
            except h2.exceptions.ProtocolError:  # frames after the server's GOAWAY in one chunk
                self.goaway = True
                continue
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = True
                self._on_event(event, pending)
            if not self.goaway:
                await self._flush()

    def _on_event(self, event: h2.events.Event, pending: set[int]) -> None:
        stream_id = getattr(event, "stream_id", None)
        result = self.results.get(stream_id) if stream_id is not None else None
        if result is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            result.headers = {str(k): str(v) for k, v in event.headers or ()}
        elif isinstance(event, h2.events.TrailersReceived):
            result.trailers = {str(k): str(v) for k, v in event.headers or ()}
        elif isinstance(event, h2.events.DataReceived):
            result.data += event.data or b""
            self._conn.acknowledge_received_data(event.flow_controlled_length or 0, int(stream_id or 0))
        elif isinstance(event, h2.events.StreamReset):
            result.reset = int(event.error_code or 0)
            pending.discard(stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            result.ended = True
            pending.discard(stream_id)

    def status(self, stream_id: int) -> str | None:
        """The grpc-status a stream ended with (trailers, or headers of a trailers-only reply)."""
        result = self.results[stream_id]
        return result.trailers.get("grpc-status", result.headers.get("grpc-status"))

    def message(self, stream_id: int) -> str:
        result = self.results[stream_id]
        return result.trailers.get("grpc-message", result.headers.get("grpc-message", ""))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None
