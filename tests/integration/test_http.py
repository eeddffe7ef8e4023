"""The HTTP front end over real sockets: the seed's curl commands against the demo corpora in
Milvus Lite, the proto-mirroring /v1 routes, errors and limits, cancellation, deadlines, TLS and
drain. The engine is the scripted FakeEngine (deterministic answers, a token delay where a
test needs a stream that lasts)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.types import CorpusFormat
from apihelper.service.engine.fake import GORILLA_V0_REPLY, FakeEngine
from apihelper.service.frontends import RunningServer, start_server
from apihelper.service.metrics import NullRecorder
from apihelper.service.settings import Settings
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import http_client, live_server, sse_events, stub_for, wait_until

LONG_REPLY = " ".join(["word"] * 200)  # 200 tokens: at 20 ms a token a stream lasts 4 s


def _demo_root() -> Path:
    return Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"


@dataclass
class RecordingRecorder(NullRecorder):
    """Keeps what the front ends report: (rpc, code) of every finished call, first tokens."""

    finished: list[tuple[str, str]] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        self.finished.append((rpc, code))

    def first_token(self, seconds: float) -> None:
        self.first_tokens.append(seconds)


# -- the demo: Milvus Lite with the corpora `make demo` ingests ----------------------------------


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """What ``make demo`` serves (deploy/demo.sh): the sample OpenAPI spec as ``rest``, the
    installed prometheus_client package as ``functional``, in Milvus Lite with the MiniLM
    embedder; the scripted engine in place of the dev model, so the answers are known."""
    import prometheus_client

    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore

    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    embedder = await asyncio.to_thread(Embedder)
    store = MilvusStore(uri, "")
    functional = Path(prometheus_client.__file__).parent
    for name, path, fmt in (
        ("rest", _demo_root(), CorpusFormat.OPENAPI),
        ("functional", functional, CorpusFormat.PYTHON),
    ):
        await asyncio.to_thread(ingest_corpus, store, embedder, name, path, fmt, False)
    store.close()
    retriever = await open_retriever(uri, "", embedder)
    async with live_server(FakeEngine(), retriever, http=True) as running:
        yield running


async def _run(*args: str) -> tuple[int, str]:
    """A command as its own process, without blocking the loop the server runs on."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, (out or err).decode()


SEED_CURLS = (
    """curl -X POST -H "Content-Type: application/json" -d '{"instruction":"Create a new session"}' """
    "http://127.0.0.1:8000/rest_api",
    """curl -X POST -H "Content-Type: application/json" -d '{"instruction":"Create a new session"}' """
    "http://127.0.0.1:8000/functional",
    """curl -X POST -H "Content-Type: application/json" -d '{"text":"Object detection on a photo. <<<api_domain>>>:"}' """
    "http://127.0.0.1:8000/inference",
)


async def _seed_answer(command: str, port: int) -> Any:
    """The seed's curl line, run by the curl binary where there is one (else the same request
    through httpx), against ``port`` instead of 8000."""
    import shlex

    args = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    if shutil.which("curl"):
        code, out = await _run(*args, "--silent", "--show-error", "--fail-with-body")
        assert code == 0, out
        return json.loads(out)
    body, url = args[args.index("-d") + 1], args[-1]
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_seeds_curl_commands_against_the_demo_corpora(demo: RunningServer) -> None:
    rest, functional, inference = [await _seed_answer(c, demo.http_port) for c in SEED_CURLS]

    assert rest["sources"] and {s["corpus"] for s in rest["sources"]} == {"rest"}
    assert rest["sources"][0]["key"] == "POST /sessions"
    assert rest["timings"]["retrieval_ms"] > 0

    assert functional["sources"] and {s["corpus"] for s in functional["sources"]} == {"functional"}
    assert all(s["key"].startswith("prometheus_client.") for s in functional["sources"])

    assert inference["text"] == GORILLA_V0_REPLY  # the generated answer, whole
    assert inference["finish_reason"] == "FINISH_REASON_STOP"
    assert inference["sources"] and inference["usage"]["completion_tokens"] > 0
    assert [c["name"] for c in inference["api_calls"]] == ["POST /sessions"]
    assert inference["verdict"].startswith("VERDICT_") and inference["verdict"] != "VERDICT_UNSPECIFIED"


async def test_v1_routes_speak_the_proto_in_its_json_mapping(demo: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}", timeout=60) as client:
        corpora = json_format.ParseDict((await client.get("/v1/corpora")).json(), pb.ListCorporaResponse())
        assert {c.name for c in corpora.corpora} == {"rest", "functional"}
        assert all(c.doc_count > 0 and c.last_ingest.seconds > 0 for c in corpora.corpora)

        request = {"instruction": "upload a file to a folder", "retrieval": {"corpora": ["rest"], "top_k": 2}}
        retrieved = json_format.ParseDict(
            (await client.post("/v1/retrieve", json=request)).json(), pb.RetrieveResponse()
        )
        assert len(retrieved.sources) == 2 and retrieved.sources[0].key == "POST /folders/{folder_name}/files"

        generate = {"instruction": "Create a new session", "retrieval": {"corpora": ["rest"]}}
        kinds, messages = [], []
        async with client.stream("POST", "/v1/generate", json=generate) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event, data in sse_events(response.aiter_lines()):
                message = json_format.Parse(data, pb.GenerateResponse())
                assert message.WhichOneof("event") == event  # the event is named by the oneof it fills
                kinds.append(event)
                messages.append(message)
    assert kinds[0] == "sources" and kinds[-1] == "completion" and set(kinds[1:-1]) == {"delta"}
    completion = messages[-1].completion
    assert completion.text == "".join(m.delta.text for m in messages[1:-1]) == GORILLA_V0_REPLY
    assert completion.verdict == pb.VERDICT_VALID and completion.api_calls[0].matched_key == "POST /sessions"
    assert completion.corpus_versions["rest"]


async def test_the_spec_and_the_web_app_are_served_without_a_token() -> None:
    async with live_server(http=True, auth_token="s3cret") as running, http_client(running) as client:
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.1")
        for path in ("/rest_api", "/functional", "/inference", "/v1/generate", "/v1/retrieve", "/v1/corpora"):
            assert path in spec["paths"]
        assert {"/v1/chat/completions", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
        page = await client.get("/")
        assert page.status_code == 200 and "<title>apihelper</title>" in page.text
        script = await client.get("/static/app.js")
        assert script.status_code == 200 and "v1/generate" in script.text
        assert (await client.get("/healthz")).json() == {"status": "SERVING"}
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/v1/corpora")).status_code == 401  # the data is not open


# -- errors and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/generate", {"instruction": ""}, "instruction"),
        ("/v1/generate", {"instruction": "x", "sampling": {"temperature": 9}}, "sampling.temperature"),
        ("/v1/generate", {"instruction": "x", "retrieval": {"topK": "many"}}, "retrieval.top_k"),
        ("/v1/generate", {"instruction": "x", "nonsense": 1}, "nonsense"),
        ("/v1/retrieve", {"instruction": "x", "retrieval": {"mode": "TELEPATHY"}}, "retrieval.mode"),
        ("/v1/retrieve", [1, 2], "body"),
        ("/rest_api", {"instruction": "   "}, "instruction"),
        ("/inference", {"txt": "x"}, "text"),
        ("/inference", {"text": "x", "sampling": {"max_tokens": 0}}, "sampling.max_tokens"),
        ("/v1/chat/completions", {"model": "fake", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, "model"),
        (
            "/v1/chat/completions",
            {"model": "fake", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "magic"}]},
            "tools[0].type",
        ),
        (
            "/v1/chat/completions",
            {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "x"}], "temperature": -1},
            "sampling.temperature",
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field(path: str, body: Any, field: str) -> None:
    async with live_server(http=True) as running, http_client(running) as client:
        response = await client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["param"] == field and error["type"] == "INVALID_ARGUMENT" and error["code"] == 400
        assert error["message"]
        # ... and the server keeps serving.
        assert (await client.post("/v1/retrieve", json={"instruction": "Create a new session"})).status_code == 200


async def test_an_unknown_corpus_is_404_in_every_mode() -> None:
    async with live_server(http=True) as running, http_client(running) as client:
        for mode in ("RETRIEVAL_MODE_HYBRID", "RETRIEVAL_MODE_KEYWORD", "RETRIEVAL_MODE_NONE"):
            for path in ("/v1/retrieve", "/v1/generate"):
                body = {"instruction": "x", "retrieval": {"corpora": ["nope"], "mode": mode}}
                response = await client.post(path, json=body)
                assert response.status_code == 404, (path, mode, response.text)
                error = response.json()["error"]
                assert error["type"] == "NOT_FOUND" and error["param"] == "retrieval.corpora"
                assert "'nope'" in error["message"] and "demo" not in error["message"]


async def test_not_json_and_too_large_bodies() -> None:
    async with live_server(http=True, max_message_bytes=1024) as running, http_client(running) as client:
        broken = await client.post("/v1/retrieve", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"
        big = await client.post("/v1/retrieve", json={"instruction": "x" * 5000})
        assert big.status_code == 413 and big.json()["error"]["param"] == "body"
        assert (await client.get("/v1/nowhere")).status_code == 404
        assert (await client.get("/v1/generate")).status_code == 405


async def test_bearer_token_over_http() -> None:
    async with live_server(http=True, auth_token="s3cret") as running, http_client(running) as client:
        body = {"instruction": "Create a new session"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path in (("POST", "/v1/generate"), ("GET", "/v1/models"), ("POST", "/rest_api")):
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["type"] == "UNAUTHENTICATED"
                assert response.headers["www-authenticate"] == "Bearer"
        ok = await client.post("/v1/retrieve", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_streams_past_the_limit_get_429_whichever_protocol_holds_the_slots() -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.02)
    async with live_server(engine, http=True, max_concurrent_streams=2) as running, stub_for(running) as stub:
        url = f"http://127.0.0.1:{running.http_port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"instruction": "Create a new session", "sampling": {"max_tokens": 150}}
            grpc_call = stub.Generate(pb.GenerateRequest(instruction="Create a new session"), timeout=30)
            first = await grpc_call.read()
            assert isinstance(first, pb.GenerateResponse) and first.HasField("sources")
            async with client.stream("POST", "/v1/generate", json=body) as held:
                assert held.status_code == 200
                await wait_until(lambda: engine.num_in_flight == 2, 10, "two streams running")
                for path, extra in (
                    ("/v1/generate", {}),
                    ("/inference", {}),
                    ("/v1/chat/completions", {"stream": True}),
                    ("/v1/chat/completions", {}),
                ):
                    request: dict[str, Any] = {"text": "x"} if path == "/inference" else {"instruction": "x"}
                    if path.endswith("completions"):
                        request = {"model": "fake", "messages": [{"role": "user", "content": "x"}], **extra}
                    refused = await client.post(path, json=request)
                    assert refused.status_code == 429, (path, refused.text)
                    assert refused.json()["error"]["type"] == "RESOURCE_EXHAUSTED"
                # gRPC meets the same limit.
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in stub.Generate(pb.GenerateRequest(instruction="x"), timeout=10):
                        pass
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            grpc_call.cancel()
            await wait_until(lambda: engine.num_in_flight == 0, 10, "the streams ending")
            # Capacity is back, and the server kept serving throughout.
            assert (
                await client.post("/inference", json={"text": "x", "sampling": {"max_tokens": 3}})
            ).status_code == 200


# -- cancellation and deadlines ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"instruction": "Create a new session"}),
        ("/v1/chat/completions", {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
async def test_a_client_leaving_a_stream_aborts_the_engine_request(path: str, body: dict[str, Any]) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.02)
    recorder = RecordingRecorder()
    async with live_server(engine, recorder=recorder, http=True) as running, http_client(running) as client:
        async with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for _ in sse_events(response.aiter_lines()):
                seen += 1
                if seen == 4:  # the sources (or role) and a few tokens: then hang up
                    break
            assert engine.num_in_flight == 1
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine request being aborted")
        await wait_until(lambda: (f"POST {path}", "CANCELLED") in recorder.finished, 5, "the call counted CANCELLED")
        assert running.core.streams.active == 0


async def test_a_client_leaving_a_whole_answer_aborts_the_engine_request() -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.02)
    recorder = RecordingRecorder()
    async with (
        live_server(engine, recorder=recorder, http=True) as running,
        http_client(running, timeout=0.5) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):  # httpx gives up and closes the connection
            await client.post("/inference", json={"text": "Create a new session"})
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine request being aborted")
        await wait_until(lambda: ("POST /inference", "CANCELLED") in recorder.finished, 5, "the call counted")
        assert running.core.streams.active == 0


async def test_deadlines_end_streams_and_answers_and_abort_the_engine() -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.02)
    async with (
        live_server(engine, http=True, default_deadline_seconds=30, max_deadline_seconds=30) as running,
        http_client(running) as client,
    ):
        headers = {"X-Request-Timeout": "0.3"}
        events = []
        async with client.stream("POST", "/v1/generate", json={"instruction": "x"}, headers=headers) as response:
            assert response.status_code == 200
            events = [(e, d) async for e, d in sse_events(response.aiter_lines())]
        assert events[0][0] == "sources" and events[-1][0] == "error"
        error = json.loads(events[-1][1])["error"]
        assert error["type"] == "DEADLINE_EXCEEDED" and "0.3" in error["message"]
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine request being aborted")

        whole = await client.post("/inference", json={"text": "x"}, headers=headers)
        assert whole.status_code == 504 and whole.json()["error"]["type"] == "DEADLINE_EXCEEDED"
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine request being aborted")

        for bad in ("0", "-1", "soon"):  # longer than max_deadline_seconds is cut (test_call_policy)
            refused = await client.post("/v1/retrieve", json={"instruction": "x"}, headers={"X-Request-Timeout": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-request-timeout"


async def test_the_servers_default_deadline_covers_requests_without_one() -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.02)
    async with live_server(engine, http=True, default_deadline_seconds=0.3) as running, http_client(running) as client:
        body = {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 504, response.text
        assert "server's default" in response.json()["error"]["message"]
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine request being aborted")


# -- metrics, TLS, drain -----------------------------------------------------------------------


async def test_calls_are_recorded_by_route_with_ttft() -> None:
    recorder = RecordingRecorder()
    async with live_server(recorder=recorder, http=True) as running, http_client(running) as client:
        async with client.stream("POST", "/v1/generate", json={"instruction": "Create a new session"}) as response:
            _ = [x async for x in sse_events(response.aiter_lines())]
        await client.post("/v1/retrieve", json={"instruction": ""})
        await client.get("/v1/corpora")
        await client.get("/healthz")  # not an API call: not recorded
    assert recorder.finished == [
        ("POST /v1/generate", "OK"),
        ("POST /v1/retrieve", "INVALID_ARGUMENT"),
        ("GET /v1/corpora", "OK"),
    ]
    assert len(recorder.first_tokens) == 1


async def test_https_with_the_services_certificate(pki: Path) -> None:
    async with live_server(
        http=True, tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key")
    ) as running:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=pki / "ca.pem"), timeout=30) as client:
            response = await client.get(f"https://127.0.0.1:{running.http_port}/v1/corpora")
            assert response.status_code == 200 and response.json()["corpora"][0]["name"] == "demo"
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{running.http_port}/v1/corpora")


async def test_drain_lets_an_http_stream_finish_and_refuses_new_connections() -> None:
    from apihelper.service.http.server import bind

    engine = FakeEngine(" ".join(["word"] * 30), token_delay_s=0.02)
    retriever = MemoryRetriever()
    settings = Settings(port=0, http_port=0, shutdown_grace_seconds=30)
    running = await start_server(settings, engine, retriever, http_socket=bind("127.0.0.1", 0))
    url = f"http://127.0.0.1:{running.http_port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream("POST", "/v1/generate", json={"instruction": "x"}) as response:
                lines = response.aiter_lines()
                events = sse_events(lines)
                assert (await anext(events))[0] == "sources"
                stopping = asyncio.create_task(running.stop())
                await wait_until(lambda: not running.core.health.serving, 5, "NOT_SERVING")
                rest = [e async for e, _ in events]
            assert rest[-1] == "completion"  # drained whole
            await stopping
        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get("/healthz")
    finally:
        await running.stop()
        await engine.shutdown()


async def test_connections_the_http_socket_accepts_send_without_delay() -> None:
    """asyncio turns Nagle's algorithm off only for sockets whose protocol is TCP: without it an
    event written right after the headers waited for the client's delayed ACK (~40 ms, seen:
    the sources arrived together with the first token)."""
    import socket

    from apihelper.service.http.server import bind

    listening = bind("127.0.0.1", 0)
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.put_nowait(transport.get_extra_info("socket"))

    server = await asyncio.get_running_loop().create_server(Keep, sock=listening)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        conn = await asyncio.wait_for(accepted.get(), 10)
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
