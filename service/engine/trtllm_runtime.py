"""The TensorRT-LLM boundary: the only module of apihelper that imports ``tensorrt_llm``.

It imports the package lazily (``import_trtllm``), so everything else runs where TensorRT-LLM is
absent, and hands the few names apihelper uses over as a :class:`TrtllmApi` that tests replace
with a double of the same call shapes. Both sides of the compiled-engine path use it: the runtime
adapter (``apihelper.service.engine.tensorrt_llm_engine``) and the offline build
(``apihelper.build.trtllm_build``). Also here: what an engine directory must carry to be run
(``engine_manifest``), the GPU it runs on, and the parsing of the executor's iteration stats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apihelper.errors import ConfigurationError, MissingDependencyError
from apihelper.service.engine.manifest import MANIFEST_NAME, ModelManifest, read_manifest

logger = logging.getLogger(__name__)

MANIFEST_KIND = "tensorrt-llm-engine"
SUPPORTED_LINE = "1.2."
INSTALL_HINT = (
    "run the service in NVIDIA's TensorRT-LLM 1.2.x release container (see README 'Serving Gorilla on a GPU')"
)


@dataclass(frozen=True)
class TrtllmApi:
    """The few ``tensorrt_llm`` names apihelper uses. ``import_trtllm`` fills it from the real
    package; tests pass a double with the same call shapes."""

    version: str
    LLM: Callable[..., Any]
    SamplingParams: Callable[..., Any]
    KvCacheConfig: Callable[..., Any]
    BuildConfig: Callable[..., Any]
    QuantConfig: Callable[..., Any]
    QuantAlgo: Any
    CalibConfig: Callable[..., Any]
    GuidedDecodingParams: Callable[..., Any]


def import_trtllm() -> TrtllmApi:
    """Import tensorrt_llm, or say in one line why it cannot be used here."""
    try:
        import tensorrt_llm
    except ImportError as exc:
        if exc.name == "tensorrt_llm":
            # from None: the chained ImportError adds nothing to "not installed".
            raise MissingDependencyError("tensorrt_llm", "the TensorRT-LLM engine", INSTALL_HINT) from None
        raise ConfigurationError(f"tensorrt_llm is installed but cannot be imported ({exc}); {INSTALL_HINT}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"tensorrt_llm is installed but failed to initialise ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from exc
    version = str(getattr(tensorrt_llm, "__version__", "unknown"))
    try:
        from tensorrt_llm._tensorrt_engine import LLM
        from tensorrt_llm.llmapi import (
            BuildConfig,
            CalibConfig,
            GuidedDecodingParams,
            KvCacheConfig,
            QuantAlgo,
            QuantConfig,
        )
        from tensorrt_llm.llmapi import SamplingParams as TrtSamplingParams
    except ImportError as exc:
        # The compiled-engine API was removed after the 1.2.x line.
        raise ConfigurationError(f"tensorrt_llm {version} has no compiled-engine API ({exc}); {INSTALL_HINT}") from exc
    if not version.startswith(SUPPORTED_LINE):
        logger.warning("tensorrt_llm %s: apihelper is built and tested against 1.2.x", version)
    return TrtllmApi(
        version=version,
        LLM=LLM,
        SamplingParams=TrtSamplingParams,
        KvCacheConfig=KvCacheConfig,
        BuildConfig=BuildConfig,
        QuantConfig=QuantConfig,
        QuantAlgo=QuantAlgo,
        CalibConfig=CalibConfig,
        GuidedDecodingParams=GuidedDecodingParams,
    )


def cuda_compute_capability() -> str:
    """The compute capability of CUDA device 0 as "major.minor" (e.g. "9.0" on an H100)."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "the TensorRT-LLM engine", INSTALL_HINT) from exc
    if not torch.cuda.is_available():
        raise ConfigurationError("the TensorRT-LLM engine needs an NVIDIA GPU; CUDA is not available")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def cuda_device_name() -> str:
    try:
        import torch

        return str(torch.cuda.get_device_name())
    except Exception:  # informational only
        return "unknown"


@dataclass
class IterationStats:
    running: int
    waiting: int
    kv_cache_usage: float | None
    raw: dict[str, Any] = field(default_factory=dict)


def parse_iteration_stats(item: Any) -> IterationStats | None:
    """One ``get_stats_async`` item (a dict; a JSON string in older releases) or None."""
    if isinstance(item, (str, bytes)):
        try:
            item = json.loads(item)
        except ValueError:
            return None
    if not isinstance(item, dict):
        return None
    kv = item.get("kvCacheStats")
    usage: float | None = None
    if isinstance(kv, dict):
        used, total = kv.get("usedNumBlocks"), kv.get("maxNumBlocks")
        if isinstance(used, (int, float)) and isinstance(total, (int, float)) and total > 0:
            usage = max(0.0, min(1.0, float(used) / float(total)))
    return IterationStats(
        running=int(item.get("numActiveRequests") or 0),
        waiting=int(item.get("numQueuedRequests") or 0),
        kv_cache_usage=usage,
        raw=item,
    )


def engine_manifest(engine_dir: Path) -> ModelManifest:
    if not engine_dir.is_dir():
        raise ConfigurationError(f"{engine_dir}: engine directory not found")
    manifest = read_manifest(engine_dir)
    if manifest is None:
        raise ConfigurationError(
            f"{engine_dir}: no {MANIFEST_NAME}; this is not an apihelper TensorRT-LLM engine. "
            "Build one with `apihelper-build trtllm-engine`"
        )
    if manifest.kind != MANIFEST_KIND:
        raise ConfigurationError(
            f"{engine_dir}: a {manifest.kind!r} artifact, not a {MANIFEST_KIND!r}; the TensorRT-LLM "
            "engine runs compiled engines (use the transformers engine for checkpoints)"
        )
    return manifest
