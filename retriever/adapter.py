"""A query-side linear adapter over a frozen sentence embedder, and the embedder that applies it.

Queries are embedded by the base model, multiplied by a square matrix ``W`` and normalised again;
documents are embedded by the base model alone. The corpus vectors therefore stay the base
model's (no re-ingest, no second model), and the adapter costs one 384 x 384 product per query
(well under a millisecond). ``W`` is trained by ``apihelper-build train-embedder``
(``engine_build.train_embedder``) on question -> document pairs, starting from the identity.

Adapter files are ``.npz`` archives with ``weight`` (float16 or float32, dim x dim) and ``manifest``
(a JSON string: base model, dimension, the training data by name and split, the recipe). The
bundled one is ``retriever/models/query_adapter.npz``; :func:`bundled_adapter_path` finds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apihelper.errors import ConfigurationError
from apihelper.retriever.embedding import TextEmbedder

BUNDLED_ADAPTER = Path(__file__).resolve().parent / "models" / "query_adapter.npz"


def bundled_adapter_path() -> Path | None:
    """The adapter shipped with the package, or None when it is not there."""
    return BUNDLED_ADAPTER if BUNDLED_ADAPTER.is_file() else None


@dataclass(frozen=True)
class QueryAdapter:
    """``normalise(W q)`` for query vectors ``q``; ``manifest`` says what ``W`` was trained on."""

    weight: np.ndarray  # (dim, dim), float32
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def base_model(self) -> str:
        return str(self.manifest.get("base_model", ""))

    def apply(self, vector: Sequence[float]) -> list[float]:
        """The adapted, unit-length query vector."""
        q = np.asarray(vector, dtype=np.float32)
        if q.shape != (self.dim,):
            raise ValueError(f"query vector has {q.size} dimensions, the adapter {self.dim}")
        out = self.weight @ q
        norm = float(np.linalg.norm(out))
        return [float(v) for v in (out / norm if norm > 0 else out)]

    def save(self, path: Path, *, dtype: Any = np.float16) -> None:
        with Path(path).open("wb") as handle:
            np.savez_compressed(
                handle,
                weight=self.weight.astype(dtype),
                manifest=np.array(json.dumps(dict(self.manifest), sort_keys=True)),
            )

    @classmethod
    def load(cls, path: Path) -> QueryAdapter:
        """Read an adapter file; raises ConfigurationError for a missing or malformed one."""
        try:
            with np.load(Path(path), allow_pickle=False) as archive:
                weight = np.asarray(archive["weight"], dtype=np.float32)
                manifest = json.loads(str(archive["manifest"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigurationError(f"cannot read query adapter {path}: {exc}") from exc
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            raise ConfigurationError(f"query adapter {path}: weight must be square, not {weight.shape}")
        if not isinstance(manifest, dict):
            raise ConfigurationError(f"query adapter {path}: manifest is not a JSON object")
        return cls(weight, manifest)


class AdaptedEmbedder:
    """A :class:`TextEmbedder` whose queries go through a :class:`QueryAdapter`.

    Documents, the model name (recorded with each corpus) and the dimension are the base
    embedder's, so corpora ingested with the base model are searched as they are. The base
    embedder's query cache holds base vectors; the adapter is applied on every call.
    """

    def __init__(self, base: TextEmbedder, adapter: QueryAdapter) -> None:
        if adapter.base_model and adapter.base_model != base.model_name:
            raise ConfigurationError(
                f"query adapter was trained for {adapter.base_model}, the embedder is {base.model_name}"
            )
        self._base = base
        self._adapter = adapter

    @property
    def base(self) -> TextEmbedder:
        return self._base

    @property
    def adapter(self) -> QueryAdapter:
        return self._adapter

    @property
    def model_name(self) -> str:
        return self._base.model_name

    @property
    def dim(self) -> int:
        return self._base.dim

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self._base.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._adapter.apply(self._base.embed_query(text))

    def warm_up(self) -> None:
        warm = getattr(self._base, "warm_up", None)
        if callable(warm):
            warm()

    def clear_query_cache(self) -> None:
        clear = getattr(self._base, "clear_query_cache", None)
        if callable(clear):
            clear()


def query_embedder(base: TextEmbedder, adapter: str | Path) -> TextEmbedder:
    """``base`` with a query adapter: ``"bundled"`` (the shipped one, when present), ``"none"``
    (``base`` as it is) or the path of an adapter file. Raises ConfigurationError for a bad file."""
    if str(adapter) == "none":
        return base
    path = bundled_adapter_path() if str(adapter) == "bundled" else Path(adapter)
    if path is None:
        return base
    return AdaptedEmbedder(base, QueryAdapter.load(path))


__all__ = ["BUNDLED_ADAPTER", "AdaptedEmbedder", "QueryAdapter", "bundled_adapter_path", "query_embedder"]
