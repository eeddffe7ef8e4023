"""The query adapter: file round trip, the embedder wrapper, and training on a toy problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from apihelper.build.train_embedder import Recipe, TrainingSet, train_matrix
from apihelper.errors import ConfigurationError
from apihelper.retriever.adapter import AdaptedEmbedder, QueryAdapter, query_embedder


class FixedEmbedder:
    """Returns preset vectors: documents and queries alike."""

    def __init__(self, vectors: dict[str, list[float]], model_name: str = "toy") -> None:
        self._vectors = vectors
        self._name = model_name

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return len(next(iter(self._vectors.values())))

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vectors[text]


def test_adapter_round_trip_and_apply(tmp_path: Path) -> None:
    swap = np.array([[0, 1], [1, 0]], dtype=np.float32)
    adapter = QueryAdapter(swap, {"base_model": "toy", "questions": [{"file": "x.train.jsonl"}]})
    path = tmp_path / "a.npz"
    adapter.save(path)
    loaded = QueryAdapter.load(path)
    assert loaded.manifest == adapter.manifest
    assert loaded.apply([3.0, 4.0]) == pytest.approx([0.8, 0.6])
    with pytest.raises(ValueError, match="dimensions"):
        loaded.apply([1.0, 2.0, 3.0])


def test_adapted_embedder_changes_queries_only() -> None:
    base = FixedEmbedder({"q": [1.0, 0.0], "d": [0.0, 1.0]})
    embedder = AdaptedEmbedder(base, QueryAdapter(np.array([[0, 1], [1, 0]], dtype=np.float32), {"base_model": "toy"}))
    assert embedder.embed_query("q") == pytest.approx([0.0, 1.0])
    assert embedder.embed_documents(["d"]) == [[0.0, 1.0]]
    assert (embedder.model_name, embedder.dim) == ("toy", 2)
    with pytest.raises(ConfigurationError, match="trained for other"):
        AdaptedEmbedder(base, QueryAdapter(np.eye(2, dtype=np.float32), {"base_model": "other"}))
    assert query_embedder(base, "none") is base


def test_bad_adapter_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ConfigurationError, match="cannot read"):
        QueryAdapter.load(path)


def test_training_learns_a_mapping_the_identity_gets_wrong() -> None:
    rng = np.random.default_rng(0)
    dim, n_docs = 16, 12
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    # Questions are their answer docs seen through a rotation: raw cosine finds few of them.
    answers = list(range(n_docs)) * 3
    queries = (docs[answers] @ rotation.T + 0.05 * rng.normal(size=(len(answers), dim))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def hits(weight: np.ndarray) -> int:
        adapted = queries @ weight.T
        return int(sum(np.argmax(docs @ q) == a for q, a in zip(adapted, answers, strict=True)))

    toy = TrainingSet("toy", queries, [[a] for a in answers], docs)
    trained = train_matrix([toy], Recipe(tau=0.1, l2=0.0, epochs=300, lr=0.02, blend=1.0))
    assert hits(np.eye(dim, dtype=np.float32)) < len(answers) // 2
    assert hits(trained) == len(answers)
    again = train_matrix([toy], Recipe(tau=0.1, l2=0.0, epochs=300, lr=0.02, blend=1.0))
    assert np.array_equal(trained, again)  # reproducible
