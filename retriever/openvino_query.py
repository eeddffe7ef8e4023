"""Query embeddings through OpenVINO: the sentence-transformers model's transformer, compiled for
one short input at a time on one CPU thread.

A hybrid query spends most of its time embedding the question (one MiniLM forward pass: ~12 ms
under torch on two shared cores, ~5 ms here; docs/retrieval.md has the breakdown). The pooling and
normalisation are done here with numpy, so only models made of a transformer, mean pooling and
(optionally) normalisation are taken (:func:`supported`); anything else stays on torch. The vector
is the torch one within cosine 0.99998 (a test checks it). Documents are still embedded by torch.

``openvino`` is imported lazily, here only.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from apihelper.errors import MissingDependencyError

_OTHER_POOLING = (
    "pooling_mode_cls_token",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def supported(model: Any) -> bool:
    """Whether ``model`` (a SentenceTransformer) is a transformer + mean pooling (+ normalise)."""
    try:
        modules = list(model)
    except TypeError:
        return False
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    config = modules[1].get_config_dict() if hasattr(modules[1], "get_config_dict") else {}
    if config.get("pooling_mode") == "mean":
        return True
    return bool(config.get("pooling_mode_mean_tokens")) and not any(config.get(k) for k in _OTHER_POOLING)


class OpenVINOQueryEncoder:
    """One query at a time through the compiled transformer, then mean pooling and L2 norm.

    Raises MissingDependencyError without openvino, ValueError for a model :func:`supported`
    refuses; conversion errors are the converter's own (the caller falls back to torch).
    """

    def __init__(self, model: Any, *, threads: int = 1) -> None:
        if not supported(model):
            raise ValueError("only a transformer with mean pooling can run on OpenVINO here")
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError("openvino", "OpenVINO query embeddings", "pip install openvino") from exc
        transformer = next(iter(model))
        self._tokenizer = model.tokenizer
        self._max_length = int(getattr(model, "max_seq_length", None) or 512)
        self._lower = bool(getattr(transformer, "do_lower_case", False))
        example = dict(self._tokenizer(["an example query"], return_tensors="pt"))
        self._inputs = list(example)
        with warnings.catch_warnings():
            # Tracing warns that branches on tensor shapes (padding, causality) become constants:
            # they hold here, where one unpadded query is encoded at a time by a bidirectional
            # encoder; left alone they filled the server's log at every start.
            warnings.simplefilter("ignore")
            converted = ov.convert_model(transformer.auto_model.eval(), example_input=example)
        self._compiled = ov.Core().compile_model(
            converted, "CPU", {"INFERENCE_NUM_THREADS": max(1, threads), "PERFORMANCE_HINT": "LATENCY"}
        )
        self._local = threading.local()  # an infer request per thread: a request is not shareable

    def encode(self, text: str) -> list[float]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        batch = self._tokenizer(
            [text.lower() if self._lower else text], return_tensors="np", truncation=True, max_length=self._max_length
        )
        tokens = request.infer({name: batch[name] for name in self._inputs})[0][0]  # tokens x dim
        mask = batch["attention_mask"][0][:, None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=0) / max(float(mask.sum()), 1e-9)
        norm = float(np.linalg.norm(pooled))
        return [float(v) for v in (pooled / norm if norm > 0 else pooled)]


__all__ = ["OpenVINOQueryEncoder", "supported"]
