"""The API-choice policy (issue 21): ``retriever`` fixes a constrained answer's API to the
top-ranked retrieved doc (the model only fills its arguments), ``model`` lets the model pick
among the retrieved ones; the model's manifest names its policy and a request may override it.
The engine is the fake one with guided decoding on: what is checked is the grammar it is given."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.memory import MemoryRetriever
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.engine.manifest import ModelManifest, manifest_api_choice, read_manifest
from apihelper.service.engine.protocol import ApiChoice, EngineOutput, EngineRequest
from apihelper.service.prompts import PromptFormat
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import bundled_gguf_or_skip, live_server, stub_for

SAMPLE = Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"
REPLY = '<tool_call>[{"name": "terminateSession", "arguments": {"session_id": "sess-42"}}]</tool_call>'


class GrammarTakingEngine(FakeEngine):
    """The fake engine, saying it constrains: it keeps the grammar it is handed (``grammars``)
    and answers its fixed reply."""

    def __init__(self, default: ApiChoice) -> None:
        super().__init__(REPLY, prompt_format=PromptFormat.CHAT_TOOLS)
        self._info = dataclasses.replace(self._info, guided_decoding=True, api_choice=default)
        self.grammars: list[str] = []

    def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if request.guided is not None:
            self.grammars.append(request.guided.ebnf)
        return super().stream(dataclasses.replace(request, guided=None))


async def _grammar(default: ApiChoice, choice: pb.ApiChoice) -> tuple[str, pb.Completion]:
    _, loaded = load_corpus(SAMPLE)
    docs = {d.key: d for d in loaded.docs}
    ranked = [docs["POST /sessions/{session_id}/restart"], docs["DELETE /sessions/{session_id}"]]
    engine = GrammarTakingEngine(default)
    async with (
        live_server(engine, MemoryRetriever(loaded.docs, retrieved=ranked)) as running,
        stub_for(running) as stub,
    ):
        request = pb.GenerateRequest(instruction="Terminate session sess-42", api_choice=choice)
        messages = [m async for m in stub.Generate(request, timeout=30)]
    (ebnf,) = engine.grammars
    return ebnf, messages[-1].completion


@pytest.mark.parametrize(
    ("default", "choice", "expected"),
    [
        (ApiChoice.MODEL, pb.API_CHOICE_UNSPECIFIED, pb.API_CHOICE_MODEL),
        (ApiChoice.RETRIEVER, pb.API_CHOICE_UNSPECIFIED, pb.API_CHOICE_RETRIEVER),
        (ApiChoice.MODEL, pb.API_CHOICE_RETRIEVER, pb.API_CHOICE_RETRIEVER),
        (ApiChoice.RETRIEVER, pb.API_CHOICE_MODEL, pb.API_CHOICE_MODEL),
    ],
)
async def test_the_policy_decides_which_apis_the_grammar_allows(
    default: ApiChoice, choice: pb.ApiChoice, expected: pb.ApiChoice
) -> None:
    ebnf, completion = await _grammar(default, choice)
    assert completion.api_choice == expected
    assert "restartSession" in ebnf
    if expected == pb.API_CHOICE_RETRIEVER:
        assert "terminateSession" not in ebnf  # only the top-ranked API
    else:
        assert "terminateSession" in ebnf


def test_the_manifest_carries_the_policy(tmp_path: Path) -> None:
    ModelManifest("gguf", "smollm2", PromptFormat.CHAT_TOOLS, api_choice="retriever").write(tmp_path)
    assert manifest_api_choice(read_manifest(tmp_path)) is ApiChoice.RETRIEVER
    assert manifest_api_choice(None) is ApiChoice.MODEL


def test_staged_smollm2_is_served_with_the_retriever_policy(tmp_path: Path) -> None:
    """import-gguf --gguf-only writes SmolLM2's chosen policy; the OpenVINO engine reads it."""
    from apihelper.build.import_gguf import stage_gguf
    from apihelper.service.engine.openvino_engine import resolve_model

    gguf = bundled_gguf_or_skip()
    manifest = stage_gguf(gguf, tmp_path / "smollm2")
    assert manifest.api_choice == "retriever"
    assert resolve_model(tmp_path / "smollm2", None, None).api_choice is ApiChoice.RETRIEVER
