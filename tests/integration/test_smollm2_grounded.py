"""SmolLM2 on the OpenVINO CPU engine with grounded arguments (issue 21): the demo corpus's
questions through the real gRPC service. "Terminate session sess-42 ..." must call
terminateSession with session_id "sess-42" (copied from the question, not "]["), and "Create a
new session" must call createSession with no schema text among its values, its required nested
fields given, under the verdict ``valid``. The retriever is a fixed one (the three operations a
search returns first for each question), so the test is about the answer, not retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.types import ApiDoc
from apihelper.service.prompts import PromptFormat
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import bundled_gguf_or_skip, live_server, stub_for

SAMPLE = Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"
MAX_TOKENS = 160  # what make demo asks for


def _docs() -> dict[str, ApiDoc]:
    _, result = load_corpus(SAMPLE)
    return {d.key: d for d in result.docs}


async def _ask(question: str, retrieved: list[str]) -> pb.Completion:
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed (pip install openvino-genai)")
    from apihelper.service.engine.config import OpenVINOConfig
    from apihelper.service.engine.openvino_engine import OpenVINOEngine

    gguf = bundled_gguf_or_skip()
    docs = _docs()
    retriever = MemoryRetriever(list(docs.values()), retrieved=[docs[k] for k in retrieved])
    engine = await OpenVINOEngine.load(gguf, OpenVINOConfig(prompt_format=PromptFormat.CHAT_TOOLS, num_threads=2))
    try:
        async with live_server(engine, retriever) as running, stub_for(running) as stub:
            request = pb.GenerateRequest(
                instruction=question, sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
            )
            messages = [m async for m in stub.Generate(request, timeout=600)]
    finally:
        await engine.shutdown()
    return messages[-1].completion


async def test_terminate_copies_the_session_id_from_the_question() -> None:
    completion = await _ask(
        "Terminate session sess-42 right away, without waiting for a graceful shutdown",
        ["DELETE /sessions/{session_id}", "POST /sessions/{session_id}/restart", "GET /sessions/{session_id}"],
    )
    assert completion.calls_constrained
    call = json.loads(completion.api_calls[0].raw)
    assert call["name"] == "terminateSession", completion.text
    assert call["arguments"]["session_id"] == "sess-42", completion.text
    assert completion.verdict == pb.VERDICT_VALID, list(completion.verdict_reasons)


async def test_create_session_is_valid_with_no_schema_text_among_its_values() -> None:
    completion = await _ask(
        "Create a new session", ["POST /sessions", "POST /sessions/{session_id}/restart", "GET /sessions"]
    )
    call = json.loads(completion.api_calls[0].raw)
    values = json.dumps(call["arguments"])
    assert "Resources reserved" not in values and '"type": "object"' not in values, completion.text
    assert completion.verdict == pb.VERDICT_VALID, (completion.text, list(completion.verdict_reasons))
