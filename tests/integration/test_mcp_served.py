"""MCP against a live ``apihelper-serve`` process with Backend.AI's OpenAPI spec ingested (the real
embedder and Milvus Lite, the dev model), through the SDK's streamable-HTTP client and through
``apihelper-mcp`` started as a subprocess over stdio, behind a bearer token."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from apihelper.service.answers.check import Verdict
from apihelper.service.mcp.server import TOOLS
from apihelper.service.mcp.stdio import TOKEN_ENV, remote
from tests.support import free_port, ingest_in_subprocess, shared_corpus

BIN = Path(sys.executable).parent
TOKEN = "mcp-test-token"
API_HOST = "https://api.backend.ai"  # where the test says Backend.AI is served (the spec names no server)

# A served process on the dev model: the transformers 5 engine (the compat env has 4.57.1).
pytestmark = pytest.mark.transformers5


@dataclass
class Served:
    url: str
    metrics: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def served(dev_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    spec = shared_corpus("backend.ai", "openapi.json")
    tmp = tmp_path_factory.mktemp("mcp-served")
    db = tmp / "milvus.db"
    ingest_in_subprocess(str(db), f"bai_rest={spec}")
    log, http_port, metrics_port = tmp / "serve.log", free_port(), free_port()
    args = ["--port", "0", "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--milvus-uri", str(db)]
    args += ["--model", str(dev_model_dir), "--auth-token", TOKEN, "--api-base-urls", API_HOST]
    args += ["--health-check-interval-seconds", "60", "--shutdown-grace-seconds", "60"]
    process = subprocess.Popen([str(BIN / "apihelper-serve"), *args], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "apihelper: HTTP on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"apihelper-serve did not start ({process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Served(f"http://127.0.0.1:{http_port}/mcp", f"http://127.0.0.1:{metrics_port}/metrics", process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


async def test_without_the_token_mcp_is_refused(served: Served) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=30) as http:
        refused = await http.post(served.url, json=listing)
    assert refused.status_code == 401


async def test_search_apis_keeps_to_max_tokens_by_the_served_models_tokenizer(
    served: Served, dev_model_dir: Path
) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(dev_model_dir))  # what the engine counts with
    async with remote(served.url, TOKEN) as client:
        for budget in (1, 50, 120, 1000):
            asked = {"query": "Create a new session", "corpora": ["bai_rest"], "top_k": 5, "max_tokens": budget}
            found = structured(await client.call_tool("search_apis", asked))
            counts = [len(tokenizer.encode(r["text"])) if r["text"] else 0 for r in found["results"]]
            assert counts == [r["tokens"] for r in found["results"]]
            assert sum(counts) == found["tokens"] <= budget
            if budget >= 1000:  # enough for every result to show its head
                assert all(r["text"].startswith(r["key"]) for r in found["results"])


async def test_streamable_http_client_searches_and_checks_backend_ai(served: Served) -> None:
    async with remote(served.url, TOKEN) as client:
        assert {t.name for t in (await client.list_tools()).tools} == set(TOOLS)
        corpora = structured(await client.call_tool("list_corpora", {}))["corpora"]
        assert [(c["name"], c["format"]) for c in corpora] == [("bai_rest", "openapi")]
        assert corpora[0]["doc_count"] > 100 and corpora[0]["version"]

        found = structured(
            await client.call_tool("search_apis", {"query": "Create a new session", "corpora": ["bai_rest"]})
        )
        first = found["results"][0]["key"]
        assert first.startswith("POST /session"), [r["key"] for r in found["results"]]
        assert found["tokens"] <= found["max_tokens"]
        doc = structured(await client.call_tool("get_api", {"key": first, "corpus": "bai_rest"}))
        assert doc["metadata"]["method"] == "POST"

        nope = {"call": f'requests.post("{API_HOST}/nope")', "corpus": "bai_rest"}
        assert structured(await client.call_tool("check_call", nope))["verdict"] == Verdict.UNKNOWN_API.value
        # A real operation sent to another host: not where the API is documented to be served.
        elsewhere = {"call": f'requests.post("https://evil.example{first.split(" ", 1)[1]}")', "corpus": "bai_rest"}
        verdict = structured(await client.call_tool("check_call", elsewhere))
        assert verdict["verdict"] == Verdict.UNKNOWN_API.value
        assert any("evil.example" in r for r in verdict["reasons"]), verdict


async def test_apihelper_mcp_forwards_stdio_to_the_service(served: Served) -> None:
    target = served.url.removeprefix("http://").removesuffix("/mcp")
    params = StdioServerParameters(
        command=str(BIN / "apihelper-mcp"), args=["--target", target], env={**os.environ, TOKEN_ENV: TOKEN}
    )
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} == set(TOOLS)
        found = structured(
            await client.call_tool("search_apis", {"query": "Create a new session", "corpora": ["bai_rest"]})
        )
        assert found["results"][0]["key"].startswith("POST /session")
        refused = await client.call_tool("search_apis", {"query": "x", "corpora": ["nope"]})
        assert refused.is_error and "NOT_FOUND: corpora" in str(refused.content)


def test_apihelper_mcp_says_in_one_line_why_it_cannot_serve(served: Served) -> None:
    target = served.url.removeprefix("http://").removesuffix("/mcp")
    for token, expected in ((TOKEN + "x", "UNAUTHENTICATED: missing or invalid bearer token"), ("", "UNAUTHENTICATED")):
        done = subprocess.run(
            [str(BIN / "apihelper-mcp"), "--target", target],
            env={**os.environ, TOKEN_ENV: token},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert done.stderr.startswith(f"apihelper-mcp: {served.url}: ") and expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_sigterm_drains_an_mcp_call_in_flight(served: Served) -> None:
    """Last in the module: it stops the server. A write_call (the dev model generating on CPU) in
    flight when SIGTERM comes is answered whole, and the process exits 0. The call is a plain
    JSON-RPC POST: the SDK's client follows a result with a tools/list, which a draining server
    rightly refuses."""
    request = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "write_call", "arguments": {"instruction": "Create a new session"}},
    }
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=300) as http:
        call = asyncio.ensure_future(http.post(served.url, json=request, headers=headers))
        deadline = time.monotonic() + 120
        while 'apihelper_requests_in_flight{rpc="MCP write_call"} 1.0' not in (await http.get(served.metrics)).text:
            assert not call.done(), call.result().text
            assert time.monotonic() < deadline, "the write_call never showed in flight"
            await asyncio.sleep(0.05)
        served.process.send_signal(signal.SIGTERM)
        response = await call
    assert response.status_code == 200
    result = response.json()["result"]
    assert not result["isError"], result
    assert result["structuredContent"]["verdict"]
    assert await asyncio.to_thread(served.process.wait, 120) == 0
