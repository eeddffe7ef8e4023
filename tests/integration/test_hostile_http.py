"""Hostile input over the HTTP front end (issue 25), against the real server: each test is one
row of the probe, with generated inputs, asserting structural facts (bounded work, statuses,
counts) rather than tight wall-time budgets."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx

from apihelper.service.engine.fake import FakeEngine
from apihelper.service.prompt_fit import MAX_CHARS_PER_TOKEN
from tests.support import budget, http_client, live_server, wait_until


class CountingEngine(FakeEngine):
    """The fake engine, noting what its tokenizer was given and on which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []  # (thread, characters)

    def count_tokens(self, text: str) -> int:
        self.calls.append((threading.get_ident(), len(text)))
        return super().count_tokens(text)

    @property
    def tokenized_chars(self) -> int:
        return sum(n for _, n in self.calls)


def _tools(total_bytes: int, count: int = 128) -> list[dict[str, Any]]:
    """``count`` tools of about ``total_bytes`` in all, each with its own words (no two alike)."""
    each = total_bytes // count
    tools = []
    for i in range(count):
        words = " ".join(f"w{i}x{j}" for j in range(each // 8))
        tools.append({"type": "function", "function": {"name": f"tool_{i}", "description": words}})
    return tools


async def test_a_chat_request_whose_tools_do_not_fit_keeps_the_loop_free_and_its_work_bounded() -> None:
    """Row 3: 1 MB of tools. The fit runs off the event loop (the tokenizer in a worker), tokenizes
    a bounded share of the request (each doc once, none past the context), and a health check made
    meanwhile answers at once."""
    engine = CountingEngine()
    async with live_server(engine, http=True) as server, http_client(server, timeout=budget(120.0)) as client:
        tools = _tools(1_000_000)
        body = {"model": "fake", "messages": [{"role": "user", "content": "call a tool"}], "tools": tools}
        size = len(httpx.Request("POST", "http://x", json=body).content)
        assert size > 900_000

        delays: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                health = await client.get("/healthz")
                assert health.status_code == 200
                delays.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        try:
            answer = await client.post("/v1/chat/completions", json=body)
        finally:
            done.set()
            await prober
        assert answer.status_code == 200, answer.text
        # On the loop: only the fake engine's own count of the prompt it is given (one call, a
        # prompt that fits the context); the fitting itself ran in the worker.
        loop_thread = threading.get_ident()
        on_loop = [n for thread, n in engine.calls if thread == loop_thread]
        assert len(on_loop) == 1 and len(engine.calls) > 1, engine.calls
        # Linear and bounded by the context: far less than the request is ever tokenized (the old
        # fit re-tokenized the whole prompt once per dropped tool: ~64 MB here).
        context_chars = engine.info.max_model_len * MAX_CHARS_PER_TOKEN
        assert engine.tokenized_chars < min(size // 2, 8 * context_chars), engine.tokenized_chars
        assert delays and max(delays) < budget(0.5), max(delays)

        # The same tools again: their counts are cached, so less is tokenized the second time.
        first = engine.tokenized_chars
        again = await client.post("/v1/chat/completions", json=body)
        assert again.status_code == 200
        assert engine.tokenized_chars - first < first


async def test_a_tool_name_must_match_whole() -> None:
    """Row 13: a name with a trailing newline is not a name (``fullmatch``, not ``match`` + ``$``)."""
    async with live_server(http=True) as server, http_client(server) as client:
        for name in ("tool\n", "tool\nx", "\ntool"):
            tool = {"type": "function", "function": {"name": name}}
            body = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
            refused = await client.post("/v1/chat/completions", json=body)
            assert refused.status_code == 400, (name, refused.text)
            assert refused.json()["error"]["param"] == "tools[0].function.name"


# -- the connection: header block, slow clients, the cap (rows 1, 2) -------------------------------


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _answer_or_close(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sends before it closes the connection (b"": closed without a word)."""
    got = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                got += chunk
    except ConnectionError:
        pass  # reset after what it sent
    return bytes(got)


async def test_a_header_block_that_never_ends_is_cut_with_431_before_a_mebibyte() -> None:
    """Row 1: a header block that never ends. The server answers 431 and closes after at most
    its limit (16 KiB) plus what one read takes, far below 1 MiB; the bytes it held go with it."""
    async with live_server(http=True) as server:
        reader, writer = await _connect(server.http_port)
        sent = 0
        writer.write(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
        answer = asyncio.ensure_future(_answer_or_close(reader, budget(30.0)))
        try:
            while not answer.done() and sent < 64 * 1024 * 1024:
                writer.write(line * 16)
                sent += len(line) * 16
                await writer.drain()
                await asyncio.sleep(0)
        except ConnectionError:
            pass  # the server closed the connection under us
        response = await answer
        writer.close()
        assert response.startswith(b"HTTP/1.1 431 "), response[:200]
        assert sent < 1024 * 1024, sent
        assert server.http is not None
        connections = server.http.server.server_state.connections
        await wait_until(lambda: not connections, budget(10.0), "the refused connection being closed")


async def test_too_many_header_fields_is_431() -> None:
    async with live_server(http=True, http_max_headers=20) as server:
        reader, writer = await _connect(server.http_port)
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(25))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + b"\r\n")
        assert (await _answer_or_close(reader, budget(10.0))).startswith(b"HTTP/1.1 431 ")
        writer.close()
        async with http_client(server) as client:
            headers = {f"X-{i}": "1" for i in range(10)}
            assert (await client.get("/healthz", headers=headers)).status_code == 200


async def test_slowloris_and_idle_connections_are_closed_at_the_header_deadline() -> None:
    """Row 2 with the defaults: 40 connections trickling a header byte every 2 s and 40 that never
    send are all closed once the header deadline (10 s by default) passes, within 15 s."""
    async with live_server(http=True) as server:
        assert server.http is not None
        port = server.http_port
        trickling = [await _connect(port) for _ in range(40)]
        idle = [await _connect(port) for _ in range(40)]
        started = time.perf_counter()

        async def trickle(writer: asyncio.StreamWriter) -> None:
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(2.0)

        tricklers = [asyncio.create_task(trickle(w)) for _, w in trickling]
        try:
            answers = await asyncio.gather(*(_answer_or_close(r, 15.0 + budget(5.0)) for r, _ in trickling + idle))
        finally:
            for task in tricklers:
                task.cancel()
            await asyncio.gather(*tricklers, return_exceptions=True)
        closed_after = time.perf_counter() - started
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
        assert 9.0 < closed_after < 15.0 + budget(5.0) - 5.0, closed_after
        for _, writer in trickling + idle:
            writer.close()


async def test_open_connections_past_the_cap_are_refused_at_once_and_grpc_still_serves() -> None:
    """Row 2: connections past ``http_max_connections`` get 503 before their request is read; the
    gRPC port and the held connections' own requests are untouched."""
    from apihelper.v1 import apihelper_pb2 as pb
    from tests.support import stub_for

    async with live_server(http=True, http_max_connections=20) as server, stub_for(server) as stub:
        held = [await _connect(server.http_port) for _ in range(20)]
        extra = [await _connect(server.http_port) for _ in range(5)]
        refused = await asyncio.gather(*(_answer_or_close(r, budget(10.0)) for r, _ in extra))
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in refused), refused
        assert (await stub.ListCorpora(pb.ListCorporaRequest(), timeout=budget(10.0))) is not None
        reader, writer = held[0]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(budget(10.0)):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        for _, w in held + extra:
            w.close()


# -- the body: deadlines, limits, media type, shape (rows 6, 9, 10, 11) ---------------------------


async def test_a_slow_body_meets_the_request_deadline_and_the_body_timeout() -> None:
    """Row 6: ``X-Request-Timeout`` covers reading the body (504 once it passes); without it the
    body timeout does (408); a body declared past the route's limit is refused before it is read."""
    async with live_server(http=True, http_body_timeout_seconds=1.0) as server:
        port = server.http_port
        for path in ("/v1/generate", "/v1/chat/completions"):
            for timeout_header, status in ((b"X-Request-Timeout: 0.5\r\n", b"504"), (b"", b"408")):
                reader, writer = await _connect(port)
                writer.write(
                    b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 1000\r\n%s\r\n{"instr' % (path.encode(), timeout_header)
                )
                answer = await _answer_or_close(reader, budget(20.0))
                assert answer.startswith(b"HTTP/1.1 " + status + b" "), (path, answer[:200])
                writer.close()
        reader, writer = await _connect(port)
        writer.write(
            b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4194304\r\n\r\n"
        )
        assert (await _answer_or_close(reader, budget(10.0))).startswith(b"HTTP/1.1 413 ")
        writer.close()


async def test_unfinished_bodies_share_one_budget_over_every_connection() -> None:
    """Row 6, the rest: bodies still arriving hold at most ``http_max_pending_body_bytes`` in all
    (each one's limit and timeout alone let 512 connections hold 4 MiB each for 30 s). Three
    bodies of 120,000 bytes cannot all be held under 256 KiB (two can): whichever is read last is
    refused, 429 with the connection closed; a small request still fits; the budget comes back
    when the holders go."""
    async with (
        live_server(http=True, http_max_pending_body_bytes=256 * 1024, http_body_timeout_seconds=300.0) as server,
        http_client(server) as client,
    ):
        connections = [await _connect(server.http_port) for _ in range(3)]
        for _, writer in connections:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b" " * 120_000  # JSON's leading blanks: valid so far
            )
        answers = [asyncio.ensure_future(_answer_or_close(reader, budget(120.0))) for reader, _ in connections]
        try:
            done, _ = await asyncio.wait(answers, return_when=asyncio.FIRST_COMPLETED)
            answer = done.pop().result()
            assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
            assert b"unfinished request bodies" in answer and b"connection: close" in answer.lower()
            chat = {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
            small = await client.post("/v1/chat/completions", json=chat)
            assert small.status_code == 200, small.text  # 240,000 held, and a small body fits
        finally:
            for task in answers:
                task.cancel()
            for _, writer in connections:
                writer.close()
        # Their shares come back: a body as large as two of them fits now.
        big = {"model": "fake", "messages": [{"role": "user", "content": "x" + " " * 240_000}]}
        deadline = time.monotonic() + budget(30.0)
        while (await client.post("/v1/chat/completions", json=big)).status_code == 429:
            assert time.monotonic() < deadline, "the closed bodies' budget did not come back"
            await asyncio.sleep(0.1)


async def test_only_the_allowed_hosts_and_only_json_bodies_and_the_page_is_not_framed() -> None:
    """Row 9: DNS rebinding (another Host) 400, the health probes excepted; a body that is not
    application/json 415; CSP and frame headers on the page and the API."""
    async with live_server(http=True) as server, http_client(server) as client:
        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
            refused = await client.get("/v1/corpora", headers={"Host": host})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "host", host
        for host in ("localhost", f"127.0.0.1:{server.http_port}", "[::1]:1"):
            assert (await client.get("/v1/corpora", headers={"Host": host})).status_code == 200, host
        for probe in ("/healthz", "/readyz"):  # an orchestrator's probe names the pod's address
            answered = await client.get(probe, headers={"Host": "10.1.2.3:8000"})
            assert answered.status_code == 200, probe
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": media} if media else {}
            body = b'{"instruction": "x"}'
            refused = await client.post("/v1/retrieve", content=body, headers=headers)
            assert refused.status_code == 415 and refused.json()["error"]["param"] == "content-type", media
        ok = await client.post(
            "/v1/retrieve", content=b'{"instruction": "x"}', headers={"Content-Type": "application/json; charset=utf-8"}
        )
        assert ok.status_code == 200
        for path in ("/", "/v1/corpora", "/healthz"):
            response = await client.get(path)
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"
    async with live_server(http=True, http_allowed_hosts="*") as server, http_client(server) as client:
        assert (await client.get("/v1/corpora", headers={"Host": "anything.example"})).status_code == 200


async def test_deep_json_and_lone_surrogates_are_400_with_one_log_line(caplog: Any) -> None:
    """Rows 10 and 11: nesting from just past the limit to 100,000 deep, and lone surrogates in a
    message or a tool, on every route that reads JSON: 400, no traceback in the log."""
    async with live_server(http=True) as server, http_client(server) as client:
        caplog.clear()
        every = ("/v1/retrieve", "/v1/generate", "/v1/chat/completions", "/inference")
        for depth, paths in ((65, every), (990, every), (30_000, every), (100_000, ("/v1/chat/completions",))):
            nested = "[" * depth + "]" * depth  # 100,000 deep is past the small routes' body limit
            for path in paths:
                body = '{"instruction": "x", "text": "x", "deep": ' + nested + "}"
                answer = await client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
                assert answer.status_code == 400, (depth, path, answer.text[:200])
                assert answer.json()["error"]["param"] == "body"
        lone = '{"model": "fake", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
        tool = (
            '{"model": "fake", "messages": [{"role": "user", "content": "x"}], '
            '"tools": [{"type": "function", "function": {"name": "f", "description": "\\udfff"}}]}'
        )
        for body in (lone, tool, '{"instruction": "\\ud83d"}'):
            path = "/v1/generate" if "instruction" in body else "/v1/chat/completions"
            answer = await client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, (body, answer.text[:200])
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        # Legitimate nesting (a tool's schema a few levels deep) is fine.
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        inner = schema
        for i in range(10):
            inner["properties"][f"p{i}"] = {"type": "object", "properties": {}}
            inner = inner["properties"][f"p{i}"]
        body_ok = {
            "model": "fake",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        }
        assert (await client.post("/v1/chat/completions", json=body_ok)).status_code == 200
