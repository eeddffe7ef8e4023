"""Whether an HTTP client is taking a stream: measured on its socket (Linux ``TCP_INFO``).

A stream's sends only block once every buffer between the server and the client's application
is full, and on Linux those buffers are large: the server's send buffer is autotuned up to
``net.ipv4.tcp_wmem``'s maximum (4 MiB by default), so a whole answer of a few hundred KB from a
client that never reads is taken by the kernel and the stall timeout of a blocked send never
fires; the engine slot stays held for the whole generation (issue 25, row 7).

The peer's TCP stack says how much its application has taken: every ACK carries the room left
in the peer's receive buffer, which grows only when its application reads. ``TCP_INFO`` gives
``tcpi_bytes_acked`` and ``tcpi_snd_wnd`` (Linux 5.4+); their sum is the right edge of the
peer's receive window. A client has taken nothing for a while when that edge has not moved
while bytes wait to go to it (``tcpi_notsent_bytes``, or the transport's own write buffer):
a client that reads nothing, with its window closed. A client that reads, however slowly, moves
the edge each time its kernel announces room again (on loopback, whose MSS is 64 KiB, in steps
of about 64 KiB; on a real link, of an MSS or a sixteenth of its buffer). A client that reads
less than one such step per stall timeout while more waits for it is cut like one that reads
nothing. Where ``TCP_INFO`` cannot be read (not Linux, not TCP), only the blocked send is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

# ``struct tcp_info`` (linux/tcp.h): the offsets of the fields read here, and the size the
# kernel must fill for ``tcpi_snd_wnd`` to be there (Linux 5.4+).
_BYTES_ACKED = 120  # __u64 tcpi_bytes_acked
_NOTSENT_BYTES = 144  # __u32 tcpi_notsent_bytes
_SND_WND = 228  # __u32 tcpi_snd_wnd
_NEEDED = _SND_WND + 4
_ASK = 512  # what getsockopt is asked for: newer kernels fill more, which is ignored

# Samples per stall timeout: a stall is seen at most a tenth of the timeout late.
SAMPLES_PER_TIMEOUT = 10
MAX_SAMPLE_SECONDS = 1.0


class ClientStalled(Exception):
    """The client took nothing of its stream for the stall timeout while more waited for it."""


@dataclass(frozen=True)
class Progress:
    edge: int  # bytes acknowledged + the peer's window: moves only when its application reads
    unsent: int  # bytes in the kernel that the peer's window does not admit yet


def read_progress(sock: Any) -> Progress | None:
    """The peer's progress on ``sock`` (a socket or asyncio's ``TransportSocket``), ``None``
    where ``TCP_INFO`` does not say it."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _ASK)
    except OSError:
        return None
    if len(raw) < _NEEDED:
        return None
    (acked,) = struct.unpack_from("=Q", raw, _BYTES_ACKED)
    (unsent,) = struct.unpack_from("=I", raw, _NOTSENT_BYTES)
    (window,) = struct.unpack_from("=I", raw, _SND_WND)
    return Progress(edge=acked + window, unsent=unsent)


async def until_stalled(work: Awaitable[None], transport: asyncio.WriteTransport | None, seconds: float) -> None:
    """Run ``work`` (a response writing to ``transport``); if its client takes nothing for
    ``seconds`` while bytes wait for it, cancel ``work`` and raise :class:`ClientStalled`."""
    task = asyncio.ensure_future(work)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or read_progress(sock) is None:
        await task
        return
    watcher = asyncio.ensure_future(_watch(sock, transport, seconds))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stalled = watcher.done() and not watcher.cancelled() and not task.done()
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if stalled:
        raise ClientStalled
    task.result()


async def _watch(sock: Any, transport: asyncio.WriteTransport, seconds: float) -> None:
    """Return once the peer's window edge has stood still for ``seconds`` with bytes waiting."""
    loop = asyncio.get_running_loop()
    interval = min(MAX_SAMPLE_SECONDS, seconds / SAMPLES_PER_TIMEOUT)
    edge: int | None = None
    since: float | None = None  # when bytes started waiting on an edge that has not moved since
    while True:
        await asyncio.sleep(interval)
        progress = read_progress(sock)
        if progress is None:  # the socket is gone: the response ends by itself
            await loop.create_future()
            return
        now = loop.time()
        if progress.edge != edge:
            edge, since = progress.edge, None
        elif progress.unsent > 0 or transport.get_write_buffer_size() > 0:
            since = now if since is None else since
            if now - since >= seconds:
                return
        else:
            since = None  # nothing waits for the client: it is not behind
