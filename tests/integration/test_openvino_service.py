"""The OpenVINO engine through the whole service, as ``make demo`` serves it: SmolLM2's GGUF staged
by ``apihelper-build import-gguf --gguf-only``, the project's sample REST corpus in Milvus Lite,
the real gRPC server with HTTP beside it. gRPC Generate, the seed's HTTP route and the
OpenAI-compatible API (the official client) answer, streamed, with constrained calls to
operations the corpus has. Skipped, saying why, without openvino-genai or the wheel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from apihelper.retriever.types import CorpusFormat
from apihelper.service.frontends import RunningServer
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import BIN, bundled_gguf_or_skip, live_server, shared_corpus, sse_events, stub_for

pytest.importorskip("openvino_genai", reason="openvino-genai is not installed (pip install openvino-genai)")

DEMO_SPEC = Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"
MAX_TOKENS = 160  # what make demo asks for


@pytest.fixture(scope="module")
def staged_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apihelper.build.import_gguf import is_current, stage_gguf

    gguf = bundled_gguf_or_skip()
    out = tmp_path_factory.mktemp("smollm2") / "gguf"
    manifest = stage_gguf(gguf, out)
    assert manifest.kind == "gguf" and manifest.details["context_length"] == 8192
    assert is_current(out, gguf, "gguf") and not is_current(out, gguf)  # not an HF import
    return out


@pytest_asyncio.fixture(scope="module")
async def served(staged_model: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    from apihelper.retriever.adapter import query_embedder
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.service.__main__ import build_engine
    from apihelper.service.settings import Settings

    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    embedder = query_embedder(await asyncio.to_thread(Embedder), Settings().query_adapter)  # as served
    store = MilvusStore(uri)
    try:
        await asyncio.to_thread(ingest_corpus, store, embedder, "rest", DEMO_SPEC, CorpusFormat.OPENAPI, False)
    finally:
        store.close()
    retriever = await open_retriever(uri, "", embedder)
    # The composition root's own choice: --engine auto on the staged GGUF is the OpenVINO engine.
    engine = await build_engine(Settings(model=str(staged_model), device="auto"))
    assert engine.info.kind == "openvino"
    async with live_server(engine, retriever, http=True) as running:
        yield running


async def test_grpc_generate_streams_a_constrained_call(served: RunningServer) -> None:
    request = pb.GenerateRequest(
        instruction="Create a new session",
        retrieval=pb.RetrievalOptions(corpora=["rest"], top_k=3),
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )
    async with stub_for(served) as stub:
        messages = [m async for m in stub.Generate(request, timeout=600)]
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "sources" and kinds[-1] == "completion"
    assert kinds.count("delta") >= 2  # streamed, not one block
    completion = messages[-1].completion
    assert completion.calls_constrained
    assert completion.api_calls, completion.text
    assert completion.verdict in (pb.VERDICT_VALID, pb.VERDICT_WRONG_ARGUMENTS), completion.text
    assert completion.usage.prompt_tokens > 100 and completion.usage.completion_tokens > 0


async def test_http_generate_streams_server_sent_events(served: RunningServer) -> None:
    from google.protobuf import json_format

    generate = {
        "instruction": "List my folders",
        "retrieval": {"corpora": ["rest"]},
        "sampling": {"max_tokens": MAX_TOKENS},
    }
    kinds, messages = [], []
    url = f"http://127.0.0.1:{served.http_port}"
    async with (
        httpx.AsyncClient(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/generate", json=generate) as response,
    ):
        assert response.status_code == 200
        async for event, data in sse_events(response.aiter_lines()):
            kinds.append(event)
            messages.append(json_format.Parse(data, pb.GenerateResponse()))
    assert kinds[0] == "sources" and kinds[-1] == "completion" and kinds.count("delta") >= 2
    completion = messages[-1].completion
    assert completion.text == "".join(m.delta.text for m in messages[1:-1])
    assert completion.calls_constrained and completion.api_calls, completion.text
    assert completion.verdict in (pb.VERDICT_VALID, pb.VERDICT_WRONG_ARGUMENTS), completion.text


async def test_the_openai_client_gets_tool_calls(served: RunningServer) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{served.http_port}/v1", api_key="none", max_retries=0)
    model = (await client.models.list()).data[0].id
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Delete the session abc"}],
        stream=True,
        max_tokens=MAX_TOKENS,
    )
    chunks, names, finish = 0, [], None
    async for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            names += [c.function.name for c in choice.delta.tool_calls or () if c.function and c.function.name]
            finish = choice.finish_reason or finish
    # The role, the call and the finish: the call's <tool_call> text is not repeated as content.
    assert chunks >= 3
    assert finish == "tool_calls" and names, finish


async def test_eval_answers_target_scores_answers_from_this_engine(served: RunningServer, tmp_path: Path) -> None:
    """The evaluator's --target client against the OpenVINO-served service (plumbing: the
    corpus is the demo's, the questions Backend.AI's REST dev questions)."""
    dev = shared_corpus("backend.ai", "dev_questions.jsonl")
    ids = [q["id"] for q in map(json.loads, dev.read_text(encoding="utf-8").splitlines()) if q["corpus"] == "rest"][:2]
    manifest = tmp_path / "split.json"
    manifest.write_text(json.dumps({"splits": {"train": [], "validation": [], "test": ids}}))
    out, summary_path = tmp_path / "rows.jsonl", tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        str(BIN / "apihelper-build"), "eval-answers", "--target", f"127.0.0.1:{served.port}",
        "--questions", str(dev), "--split-manifest", str(manifest), "--split", "test", "--max-tokens", "64",
        "--out", str(out), "--summary-json", str(summary_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=900)
    assert process.returncode == 0, stderr.decode()
    summary = json.loads(summary_path.read_text())
    assert summary["n"] == 2 and summary["failed_calls"] == 0, stdout.decode()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["error"] is None and r["completion_tokens"] > 0 and r["ttft_ms"] > 0 for r in rows)
