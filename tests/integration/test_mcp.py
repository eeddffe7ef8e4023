"""The MCP front end over the shared core, cheaply (FakeEngine, MemoryRetriever): every tool and
resource through the SDK's in-memory client, bad arguments naming their field, the call policy
(counted by front end, deadline, stream limit), and over real streamable HTTP: the bearer token,
``--no-mcp``, and 64 MCP tool calls beside 64 gRPC streams, drained together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from apihelper.retriever.doc_kinds import DocKind
from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.types import ApiDoc
from apihelper.service.answers.check import Verdict
from apihelper.service.core import Core, start_core
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.mcp.server import TOOLS, ApiHelperMcp
from apihelper.service.mcp.stdio import remote
from apihelper.service.metrics import NullRecorder
from apihelper.service.settings import Settings
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import live_server, stub_for, wait_until

# A long doc: search_apis must cut it to the token budget.
LONG_DOC = ApiDoc(
    "GET /sessions/{name}/logs",
    "Get a session's logs",
    "GET /sessions/{name}/logs: the container logs of a session. " + "Each line is one log record. " * 200,
    "session logs",
    {
        "kind": DocKind.REST_OPERATION.value,
        "method": "GET",
        "path": "/sessions/{name}/logs",
        "links": [{"corpus": "sdk", "key": "client.Session.get_logs", "title": "Session.get_logs()"}],
    },
)
DOCS = [MemoryRetriever.DOC, LONG_DOC]


@dataclass
class Recording(NullRecorder):
    finished: list[tuple[str, str]] = field(default_factory=list)

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        self.finished.append((rpc, code))


@contextlib.asynccontextmanager
async def mcp_over(
    engine: FakeEngine | None = None, recorder: Recording | None = None, **overrides: Any
) -> AsyncIterator[tuple[Client, Core]]:
    """An in-memory MCP client to the server object over a core of its own."""
    settings = Settings(port=0, **overrides)
    core = await start_core(settings, engine or FakeEngine(), MemoryRetriever(DOCS), recorder)
    try:
        async with Client(ApiHelperMcp(core).server) as client:
            yield client, core
    finally:
        await core.close()


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_five_tools_with_schemas_and_annotations() -> None:
    async with mcp_over() as (client, _):
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for tool in tools.values():
        assert tool.annotations is not None and tool.annotations.read_only_hint
        assert tool.annotations.destructive_hint is False
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.description
    search = tools["search_apis"].input_schema["properties"]
    assert search["top_k"]["maximum"] == Settings().max_top_k  # the service's own limit
    assert tools["search_apis"].input_schema["required"] == ["query"]
    assert set(tools["check_call"].input_schema["required"]) == {"call", "corpus"}
    assert tools["write_call"].annotations is not None and tools["write_call"].annotations.idempotent_hint is False


async def test_every_tool_answers() -> None:
    engine = FakeEngine()
    async with mcp_over(engine) as (client, _):
        corpora = ok(await client.call_tool("list_corpora", {}))["corpora"]
        assert [(c["name"], c["format"], c["doc_count"]) for c in corpora] == [("demo", "openapi", 2)]

        found = ok(await client.call_tool("search_apis", {"query": "session logs", "max_tokens": 40}))
        keys = [r["key"] for r in found["results"]]
        assert keys == [d.key for d in DOCS]
        # The budget holds by the engine's own count, and the long doc was cut for it.
        assert sum(engine.count_tokens(r["text"]) for r in found["results"]) <= 40
        assert found["tokens"] == sum(r["tokens"] for r in found["results"]) <= 40
        assert [r["truncated"] for r in found["results"]] == [False, True]
        # A REST operation linked to the SDK function that calls it shows that function.
        assert [r["linked"] for r in found["results"]] == [[], LONG_DOC.metadata["links"]]
        assert LONG_DOC.text.startswith(found["results"][1]["text"])

        whole = ok(await client.call_tool("search_apis", {"query": "session logs", "max_tokens": 16384}))
        assert [r["text"] for r in whole["results"]] == [d.text for d in DOCS]

        doc = ok(await client.call_tool("get_api", {"key": LONG_DOC.key, "corpus": "demo"}))
        assert doc["text"] == LONG_DOC.text and doc["metadata"]["path"] == "/sessions/{name}/logs"

        written = ok(await client.call_tool("write_call", {"instruction": "Create a new session"}))
        assert written["call"] == "POST /sessions" and written["style"] == "native"
        assert written["verdict"] == Verdict.VALID.value and written["calls"][0]["api"] == "POST /sessions"
        assert [s["key"] for s in written["sources"]] == [d.key for d in DOCS]
        as_curl = ok(await client.call_tool("write_call", {"instruction": "Create a new session", "style": "curl"}))
        assert as_curl["call"] == "curl -X POST '{BASE_URL}/sessions'"
        as_requests = ok(await client.call_tool("write_call", {"instruction": "x", "style": "requests"}))
        assert as_requests["call"] == 'requests.post(f"{BASE_URL}/sessions")'

        good = ok(await client.call_tool("check_call", {"call": "requests.post(f'{BASE}/sessions')", "corpus": "demo"}))
        assert good["verdict"] == Verdict.VALID.value and good["calls"][0]["api"] == "POST /sessions"
        bad = ok(await client.call_tool("check_call", {"call": 'requests.post("/nope")', "corpus": "demo"}))
        assert bad["verdict"] == Verdict.UNKNOWN_API.value and bad["reasons"]
        asked = {"call": "GET /sessions/abc/logs", "corpus": "demo", "question": "the logs of my session"}
        assert ok(await client.call_tool("check_call", asked))["calls"][0]["api"] == LONG_DOC.key


async def test_resources_serve_the_same_docs() -> None:
    async with mcp_over() as (client, _):
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["apihelper://api/{corpus}/{key}"]
        listed = (await client.read_resource("apihelper://corpora")).contents[0]
        assert '"name": "demo"' in getattr(listed, "text", "")
        read = (await client.read_resource("apihelper://api/demo/GET%20%2Fsessions%2F%7Bname%7D%2Flogs")).contents[0]
        assert LONG_DOC.text[:50] in getattr(read, "text", "")
        with pytest.raises(MCPError, match="key: no API"):
            await client.read_resource("apihelper://api/demo/GET%20%2Fnope")


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("search_apis", {"query": "x", "top_k": 999}, "top_k"),
        ("search_apis", {"query": "x", "max_tokens": 0}, "max_tokens"),
        ("search_apis", {"query": "   "}, "INVALID_ARGUMENT: query: must not be empty"),
        ("search_apis", {"query": "x" * 9000}, "INVALID_ARGUMENT: query: is 9000 bytes"),
        ("search_apis", {"query": "x", "corpora": ["nope"]}, "NOT_FOUND: corpora: unknown corpus 'nope'"),
        ("search_apis", {"top_k": 3}, "query"),
        ("get_api", {"key": "GET /nope", "corpus": "demo"}, "INVALID_ARGUMENT: key: no API 'GET /nope'"),
        ("get_api", {"key": "GET /nope", "corpus": "nope"}, "NOT_FOUND: corpus: unknown corpus 'nope'"),
        ("write_call", {"instruction": "x", "style": "xml"}, "style"),
        ("write_call", {"instruction": "x", "corpora": [""]}, "INVALID_ARGUMENT: corpora"),
        ("check_call", {"call": "POST /sessions", "corpus": "nope"}, "NOT_FOUND: corpus: unknown corpus"),
        ("check_call", {"call": " ", "corpus": "demo"}, "INVALID_ARGUMENT: call: must not be empty"),
        ("check_call", {"call": "f()", "corpus": "demo", "question": ""}, None),  # an empty question: none
        ("check_call", {"call": 7, "corpus": "demo"}, "call"),
    ],
)
async def test_a_bad_argument_names_its_field_and_is_counted(
    tool: str, arguments: dict[str, Any], expected: str | None
) -> None:
    recorder = Recording()
    async with mcp_over(recorder=recorder) as (client, _):
        result = await client.call_tool(tool, arguments)
    if expected is None:
        ok(result)
        assert recorder.finished == [(f"MCP {tool}", "OK")]
        return
    assert expected in error_text(result)
    code = "NOT_FOUND" if "NOT_FOUND" in expected else "INVALID_ARGUMENT"
    assert recorder.finished == [(f"MCP {tool}", code)]


async def test_calls_are_counted_by_front_end_and_share_the_stream_limit() -> None:
    recorder = Recording()
    engine = FakeEngine(token_delay_s=0.05)
    async with mcp_over(engine, recorder, max_concurrent_streams=1) as (client, core):
        first = asyncio.ensure_future(client.call_tool("write_call", {"instruction": "Create a new session"}))
        await wait_until(lambda: core.streams.active == 1, 30, "the first generation holding the one slot")
        refused = await client.call_tool("write_call", {"instruction": "again"})
        assert "RESOURCE_EXHAUSTED" in error_text(refused)
        ok(await first)
        ok(await client.call_tool("list_corpora", {}))
        await client.read_resource("apihelper://corpora")
        await client.list_tools()  # protocol traffic, not a call: not counted
        assert (await client.call_tool("no_such_tool", {})).is_error
        with pytest.raises(MCPError):
            await client.read_resource("apihelper://nothing/here")
    assert recorder.finished == [
        ("MCP write_call", "RESOURCE_EXHAUSTED"),
        ("MCP write_call", "OK"),
        ("MCP list_corpora", "OK"),
        ("MCP resources/read", "OK"),
        ("MCP tools/call", "INVALID_ARGUMENT"),  # a tool that does not exist: a bounded label
        ("MCP resources/read", "INVALID_ARGUMENT"),
    ]


async def test_the_default_deadline_ends_a_tool_call_and_aborts_its_generation() -> None:
    recorder = Recording()
    engine = FakeEngine(" ".join(["word"] * 400), token_delay_s=0.05)
    async with mcp_over(engine, recorder, default_deadline_seconds=0.5) as (client, _):
        result = await client.call_tool("write_call", {"instruction": "Create a new session"})
        assert "DEADLINE_EXCEEDED" in error_text(result)
        await wait_until(lambda: engine.num_in_flight == 0, 10, "the engine request aborted")
    assert recorder.finished == [("MCP write_call", "DEADLINE_EXCEEDED")]


async def test_a_client_cancelling_a_tool_call_aborts_its_generation() -> None:
    recorder = Recording()
    engine = FakeEngine(" ".join(["word"] * 400), token_delay_s=0.05)
    async with mcp_over(engine, recorder) as (client, core):
        call = asyncio.ensure_future(client.call_tool("write_call", {"instruction": "Create a new session"}))
        await wait_until(lambda: engine.num_in_flight == 1, 30, "the generation started")
        call.cancel()  # the SDK's client sends notifications/cancelled
        await wait_until(lambda: engine.num_in_flight == 0, 30, "the engine request aborted")
        await wait_until(lambda: bool(recorder.finished), 30, "the call counted")
        assert core.streams.active == 0
    assert recorder.finished == [("MCP write_call", "CANCELLED")]


# ---------------------------------------------------------------------------------- over HTTP


async def test_mcp_over_http_takes_the_bearer_token() -> None:
    recorder = Recording()
    async with live_server(http=True, auth_token="s3cret", recorder=recorder) as running:
        url = f"http://127.0.0.1:{running.http_port}/mcp"
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        async with httpx.AsyncClient(timeout=30) as http:
            refused = await http.post(url, json=listing)
            wrong = await http.post(url, json=listing, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == wrong.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        # A JSON-RPC error, which MCP clients show: the SDK's client raises it with this message.
        assert refused.json()["error"]["message"] == "UNAUTHENTICATED: missing or invalid bearer token"
        with pytest.raises(Exception) as refused_sdk:
            async with remote(url, "nope") as client:
                await client.list_tools()
        assert "UNAUTHENTICATED: missing or invalid bearer token" in _messages(refused_sdk.value)
        async with remote(url, "s3cret") as client:
            assert {t.name for t in (await client.list_tools()).tools} == set(TOOLS)
            ok(await client.call_tool("list_corpora", {}))
    assert recorder.finished.count(("POST /mcp", "UNAUTHENTICATED")) >= 3
    assert ("MCP list_corpora", "OK") in recorder.finished


async def test_mcp_bodies_meet_the_servers_size_limit() -> None:
    async with live_server(http=True, max_message_bytes=2000) as running, httpx.AsyncClient(timeout=30) as http:
        url = f"http://127.0.0.1:{running.http_port}/mcp"
        small = await http.post(url, json=_tool_call(1, "list_corpora", {}), headers=MCP_HEADERS)
        big = await http.post(url, json=_tool_call(2, "search_apis", {"query": "x" * 3000}), headers=MCP_HEADERS)
    assert small.status_code == 200 and not small.json()["result"]["isError"]
    assert big.status_code == 413


async def test_mcp_answers_only_for_the_allowed_host_names() -> None:
    async with live_server(http=True) as running, httpx.AsyncClient(timeout=30) as http:
        url = f"http://127.0.0.1:{running.http_port}/mcp"
        rebound = await http.post(
            url, json=_tool_call(1, "list_corpora", {}), headers={**MCP_HEADERS, "Host": "evil.example"}
        )
    assert rebound.status_code == 400  # DNS rebinding: the HTTP front end's one Host check


async def test_no_mcp_serves_no_endpoint() -> None:
    async with live_server(http=True, mcp=False) as running, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"http://127.0.0.1:{running.http_port}/mcp", json={})
    assert response.status_code == 404


async def test_64_mcp_calls_beside_64_grpc_streams_add_up_and_drain_together() -> None:
    """The tool calls go as plain JSON-RPC POSTs (what an SDK client sends over stateless streamable
    HTTP; the SDK's client would follow each result with a tools/list of its own, which a server
    that is draining rightly refuses)."""
    recorder = Recording()
    engine = FakeEngine(token_delay_s=0.05)
    settings = Settings(
        port=0,
        max_concurrent_streams=128,
        max_streams_per_connection=100,
        max_streams_per_peer=0,  # the 128 calls stand for many clients, all at 127.0.0.1
        shutdown_grace_seconds=120,
    )
    async with live_server(engine, MemoryRetriever(DOCS), http=True, recorder=recorder, settings=settings) as running:
        url = f"http://127.0.0.1:{running.http_port}/mcp"
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=300, limits=limits) as http, stub_for(running) as stub:

            async def grpc_stream(i: int) -> pb.GenerateResponse:
                last = None
                async for message in stub.Generate(pb.GenerateRequest(instruction=f"Create session {i}"), timeout=300):
                    last = message
                assert last is not None
                return last

            async def mcp_call(i: int) -> dict[str, Any]:
                arguments = {"instruction": f"Create session {i}"}
                response = await http.post(url, json=_tool_call(i, "write_call", arguments), headers=MCP_HEADERS)
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            mcp_calls = [asyncio.ensure_future(mcp_call(i)) for i in range(64)]
            grpc_calls = [asyncio.ensure_future(grpc_stream(i)) for i in range(64)]
            await wait_until(lambda: engine.num_in_flight == 128, 120, "128 generations in flight at once")
            stopping = asyncio.ensure_future(running.stop())  # what SIGTERM does
            await wait_until(lambda: running.core.health.draining, 10, "the drain begun")
            async with httpx.AsyncClient(timeout=30) as late:
                with pytest.raises(httpx.ConnectError):
                    await late.post(url, json=_tool_call(0, "list_corpora", {}), headers=MCP_HEADERS)
            mcp_results = await asyncio.gather(*mcp_calls)
            grpc_results = await asyncio.gather(*grpc_calls)
            await stopping
    for i, body in enumerate(mcp_results):
        assert body["id"] == i and not body["result"]["isError"], body
        assert body["result"]["structuredContent"]["verdict"] == Verdict.VALID.value
    assert all(r.HasField("completion") for r in grpc_results)
    counts: dict[tuple[str, str], int] = {}
    for key in recorder.finished:
        counts[key] = counts.get(key, 0) + 1
    assert counts == {("MCP write_call", "OK"): 64, ("Generate", "OK"): 64}


MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def _tool_call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


def _messages(exc: BaseException) -> str:
    """Every message in ``exc``, exception groups opened."""
    if isinstance(exc, BaseExceptionGroup):
        return " ".join(_messages(e) for e in exc.exceptions)
    return str(exc)
