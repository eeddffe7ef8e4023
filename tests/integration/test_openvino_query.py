"""Query embeddings through OpenVINO (retriever.openvino_query) against torch's, real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from apihelper.errors import ConfigurationError
from apihelper.retriever.embedding import Embedder
from apihelper.retriever.openvino_query import supported

pytest.importorskip("openvino", reason="openvino is not installed (an x86-64/aarch64 dependency)")

QUERIES = [
    "Create a new session",
    "classify bird species in photos with a pretrained ResNet",
    "Ünïcödé: résumé naïve 東京 — emoji 🚀 and tabs\tand newlines\n",
    "x",
    " ".join(["a very long question about deploying inference services"] * 80),  # past 256 word pieces
]


@pytest.fixture(scope="module")
def embedders() -> tuple[Embedder, Embedder]:
    torch_side = Embedder(query_backend="torch", query_bf16=False, query_cache_size=0)
    openvino_side = Embedder(query_backend="openvino", query_cache_size=0)
    torch_side.warm_up()
    openvino_side.warm_up()
    return torch_side, openvino_side


def test_openvino_query_vectors_match_torch(embedders: tuple[Embedder, Embedder]) -> None:
    torch_side, openvino_side = embedders
    for query in QUERIES:
        a = np.asarray(torch_side.embed_query(query))
        b = np.asarray(openvino_side.embed_query(query))
        assert b.shape == (384,)
        assert float(np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-4)
        assert float(a @ b) > 0.9999, query


def test_documents_stay_on_torch_and_agree_with_queries(embedders: tuple[Embedder, Embedder]) -> None:
    _, openvino_side = embedders
    doc = np.asarray(openvino_side.embed_documents(["Create a new session"])[0])
    query = np.asarray(openvino_side.embed_query("Create a new session"))
    assert float(doc @ query) > 0.9999


def test_minilm_is_supported_and_a_bad_backend_is_refused(embedders: tuple[Embedder, Embedder]) -> None:
    torch_side, _ = embedders
    assert supported(torch_side._load()._model)
    assert not supported(object())
    with pytest.raises(ConfigurationError):
        Embedder(query_backend="tpu")
