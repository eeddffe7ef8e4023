"""A function-schema corpus built from BFCL: ingested into Milvus Lite, searched and answered
through the real gRPC service, the answer's call checked against the schema (issue 12).

The corpus is the pool of the first BFCL_v4_multiple lines (real third-party tool definitions);
the question asked is a train-split one, never validation or test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from apihelper.bench.retrieval.bfcl_corpus import build, read_jsonl
from apihelper.bench.retrieval.splits import read_manifest
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.prompts import PromptFormat
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import live_server, shared_corpus, stub_for

LINES = 30  # BFCL lines whose functions make the corpus (about 75 definitions)
CORPUS = "bfcl"


def ground_truth_call(call: dict[str, dict[str, list[Any]]]) -> str:
    """The first accepted value of each parameter, as an openfunctions call (optional ones that
    BFCL lets be left out are left out)."""
    ((name, params),) = call.items()
    args = [f"{p}={values[0]!r}" for p, values in params.items() if values and values[0] != ""]
    return f"{name}({', '.join(args)})"


async def test_bfcl_functions_ingest_retrieve_and_validate_over_grpc(tmp_path: Path) -> None:
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore

    bfcl = shared_corpus("bfcl")
    lines = read_jsonl(bfcl / "BFCL_v4_multiple.json")[:LINES]
    answers = {str(a["id"]): a for a in read_jsonl(bfcl / "possible_answer" / "BFCL_v4_multiple.json")}
    built = build(lines, answers)
    corpus = tmp_path / "tools.jsonl"
    corpus.write_text("".join(json.dumps(f) + "\n" for f in built.functions), encoding="utf-8")
    train = set(read_manifest("bfcl_multiple").splits["train"])
    question = next(q for q in built.questions if q["id"] in train)
    truth = answers[question["id"]]["ground_truth"][0]

    embedder = await asyncio.to_thread(Embedder)  # docs only: a query adapter changes queries
    uri = str(tmp_path / "milvus.db")
    store = MilvusStore(uri)
    try:
        report = await asyncio.to_thread(ingest_corpus, store, embedder, CORPUS, corpus, None, progress=False)
    finally:
        store.close()
    assert report.added == len(built.functions) and not report.problems

    retriever = await open_retriever(uri, "", embedder)
    good = FakeEngine(f"<<function>>{ground_truth_call(truth)}", prompt_format=PromptFormat.OPENFUNCTIONS_V2)
    async with live_server(good, retriever) as running, stub_for(running) as stub:
        listed = await stub.ListCorpora(pb.ListCorporaRequest(), timeout=10)
        assert [(c.name, c.format, c.doc_count) for c in listed.corpora] == [
            (CORPUS, "functions", len(built.functions))
        ]
        options = pb.RetrievalOptions(corpora=[CORPUS], top_k=5)
        found = await stub.Retrieve(pb.RetrieveRequest(instruction=question["question"], retrieval=options), timeout=30)
        keys = [s.key for s in found.sources]
        assert question["answer"] in keys, (question["answer"], keys)
        shown = json.loads(found.sources[keys.index(question["answer"])].text)
        assert shown["name"] == next(iter(truth))  # the schema as written, under its bare name
        request = pb.GenerateRequest(
            instruction=question["question"], retrieval=options, prompt_format=pb.PROMPT_FORMAT_OPENFUNCTIONS_V2
        )
        completion = [m async for m in stub.Generate(request, timeout=30)][-1].completion
        assert completion.verdict == pb.VERDICT_VALID, list(completion.verdict_reasons)
        assert completion.api_calls[0].matched_key == question["answer"] or "#" in completion.api_calls[0].matched_key

    name = next(iter(truth))
    wrong = FakeEngine(f"<<function>>{name}(no_such_parameter=1)", prompt_format=PromptFormat.OPENFUNCTIONS_V2)
    retriever = await open_retriever(uri, "", embedder)
    async with live_server(wrong, retriever) as running, stub_for(running) as stub:
        request = pb.GenerateRequest(
            instruction=question["question"], retrieval=options, prompt_format=pb.PROMPT_FORMAT_OPENFUNCTIONS_V2
        )
        completion = [m async for m in stub.Generate(request, timeout=30)][-1].completion
        assert completion.verdict == pb.VERDICT_WRONG_ARGUMENTS
        assert any("no_such_parameter" in r for r in completion.api_calls[0].reasons)
