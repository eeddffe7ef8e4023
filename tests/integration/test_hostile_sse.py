"""Row 7 of issue 25: an SSE client that never reads frees its engine slot within the stall
timeout, though the kernel would take a whole answer into its buffers; one that reads slowly but
steadily is not cut. Real client sockets against the real server."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from apihelper.service.engine.fake import FakeEngine
from apihelper.service.frontends import RunningServer
from apihelper.service.http.progress import read_progress
from tests.integration.test_hostile_transport import metric, recorder_for
from tests.support import live_server, wait_until

# 20,000 tokens of ~80 bytes of SSE each: about 1.6 MB, several times what the kernel's socket
# buffers take before a client that reads nothing closes its window, and still below what the
# server's autotuned send buffer (4 MiB) holds: no send of the server's ever blocks. Tokens this
# long keep each write at hundreds of bytes even when a loaded machine slows the tokens (tiny
# segments would grow the client's receive buffer instead: apihelper.service.http.progress).
TOKENS = 20_000
REPLY = " ".join(f"w{i:05d}{'x' * 24}" for i in range(TOKENS))
RPC = "POST /v1/generate"


def _engine(token_delay_s: float) -> FakeEngine:
    return FakeEngine(REPLY, max_model_len=TOKENS + 512, token_delay_s=token_delay_s)


def _open_stream(server: RunningServer, max_tokens: int) -> socket.socket:
    """A client socket that has sent a streaming Generate request (and read nothing)."""
    body = json.dumps({"instruction": "Create a new session", "sampling": {"max_tokens": max_tokens}}).encode()
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


async def test_an_sse_client_that_never_reads_frees_its_slot_within_the_stall_timeout() -> None:
    stall_s = 2.0
    engine = _engine(token_delay_s=0.002)  # the whole answer would take 40 s or more
    recorder = recorder_for(engine)
    async with live_server(
        engine, recorder=recorder, http=True, stream_stall_timeout_seconds=stall_s, shutdown_grace_seconds=0.5
    ) as server:
        sock = await asyncio.to_thread(_open_stream, server, TOKENS)
        try:
            await wait_until(lambda: engine.num_in_flight == 1, 30, "the stream's engine request starting")
            started = time.perf_counter()
            await wait_until(lambda: server.core.streams.active == 0, 60, "the stalled stream's slot being freed")
            freed = time.perf_counter() - started
            await wait_until(lambda: engine.num_in_flight == 0, 10, "the engine request being aborted")
        finally:
            sock.close()
        # Every token waits its 2 ms: the whole answer could not have ended before 40 s, so the
        # slot was freed by the stall, not by the answer's end.
        assert freed < TOKENS * 0.002, freed
        print(f"slot freed {freed:.1f} s after the stream began, stall timeout {stall_s} s")
        assert metric(recorder, "apihelper_stalled_streams_total", rpc=RPC) == 1
        assert metric(recorder, "apihelper_requests_total", rpc=RPC, code="DEADLINE_EXCEEDED") == 1


def _read_slowly(sock: socket.socket, step: int, pause_s: float, log: list[tuple[float, int]]) -> bytes:
    """Read ``step`` bytes every ``pause_s`` until the chunked stream's last chunk."""
    got = bytearray()
    while not got.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(step)
        if not chunk:
            break
        got += chunk
        log.append((time.perf_counter(), len(got)))
        time.sleep(pause_s)
    return bytes(got)


def _waiting_bytes(server: RunningServer) -> int:
    """Bytes the server's HTTP connections hold that their clients' windows do not admit."""
    assert server.http is not None
    sockets = [c.transport.get_extra_info("socket") for c in server.http.server.server_state.connections]
    return sum(p.unsent for p in map(read_progress, sockets) if p is not None)


async def test_an_sse_client_that_reads_slowly_but_steadily_is_not_cut() -> None:
    """A client reading 20 KB/s, far slower than the stream is made: its kernel's window closes
    (the server holds bytes it does not admit) and opens again as it reads, in steps of ~64 KiB
    on loopback (every ~3 s here), each step progress; with the default stall timeout (10 s) it
    gets the whole answer (~540 KB)."""
    tokens = 5_000
    engine = _engine(token_delay_s=0.0)
    recorder = recorder_for(engine)
    async with live_server(engine, recorder=recorder, http=True, shutdown_grace_seconds=0.5) as server:
        sock = await asyncio.to_thread(_open_stream, server, tokens)
        log: list[tuple[float, int]] = []
        waited = 0
        try:
            reading = asyncio.ensure_future(asyncio.to_thread(_read_slowly, sock, 4096, 0.2, log))
            while not reading.done():
                waited = max(waited, _waiting_bytes(server))
                await asyncio.sleep(0.05)
            got = await reading
        finally:
            sock.close()
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        assert b"event: completion" in got
        print(f"{len(got)} bytes read in {log[-1][0] - log[0][0]:.1f} s; up to {waited} bytes waited for the window")
        assert waited > 0  # the client's window did close: it was behind, and its progress was what counted
        assert metric(recorder, "apihelper_stalled_streams_total", rpc=RPC) == 0
        assert metric(recorder, "apihelper_requests_total", rpc=RPC, code="OK") == 1
