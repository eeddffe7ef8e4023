"""Each engine's options as one typed, validated object, built once from Settings.

An engine option is a field here (with its check), a Settings field, and one line of
``from_settings``; the engines' ``load`` take the object, so nothing spells the options out again.
An option every engine takes is a field of ``EngineOptions``, one that the engines batching in this
host take (transformers, OpenVINO) of ``BatchingOptions``: written, checked and read once.
Test seams and runtime tuning that are not settings stay keyword arguments of ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apihelper.errors import ConfigurationError
from apihelper.service.engine.choice import EngineKind
from apihelper.service.prompts import PromptFormat
from apihelper.service.settings import Settings


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """What every engine takes."""

    prompt_format: PromptFormat | None = None  # used where the model has no manifest
    guided_decoding: bool = True
    stall_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ConfigurationError("stall_timeout_s must be positive (None: no stall timeout)")


@dataclass(frozen=True, kw_only=True)
class BatchingOptions(EngineOptions):
    """What the engines that batch requests in this process's host (transformers, OpenVINO)
    take besides."""

    max_model_len: int | None = None
    max_concurrent: int = 8
    max_batch_tokens: int = 512
    num_threads: int | None = None  # None: the runtime's default

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_concurrent < 1 or self.max_batch_tokens < 1:
            raise ConfigurationError(f"{type(self).__name__}: max_concurrent and max_batch_tokens must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigurationError(f"{type(self).__name__}: num_threads must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TransformersConfig(BatchingOptions):
    """transformers' continuous batching (``TransformersEngine.load`` documents each field)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"
    block_size: int = 32
    num_blocks: int | None = None  # None: max_concurrent full contexts
    seed: int | None = None
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 4:
            raise ConfigurationError("TransformersConfig: block_size must be >= 4")


@dataclass(frozen=True, kw_only=True)
class OpenVINOConfig(BatchingOptions):
    """OpenVINO GenAI's continuous batching (``OpenVINOEngine.load`` documents each field)."""

    kv_cache_gb: int = 0  # 0: the runtime sizes it
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kv_cache_gb < 0:
            raise ConfigurationError("OpenVINOConfig: kv_cache_gb must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TensorRTLLMConfig(EngineOptions):
    """A compiled TensorRT-LLM engine (``TensorRTLLMEngine.load`` documents each field); its
    ``prompt_format`` is only a fallback: the engine's manifest wins."""

    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_block_reuse: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.kv_cache_free_gpu_memory_fraction <= 1.0:
            raise ConfigurationError(
                f"kv_cache_free_gpu_memory_fraction must be in (0, 1], got {self.kv_cache_free_gpu_memory_fraction}"
            )


EngineConfig = TransformersConfig | OpenVINOConfig | TensorRTLLMConfig


def from_settings(kind: EngineKind, settings: Settings) -> EngineConfig:
    """The chosen engine's options from ``settings`` (``kind`` is never ``auto`` here)."""
    shared: dict[str, Any] = {
        "prompt_format": settings.prompt_format,
        "guided_decoding": settings.guided_decoding,
        "stall_timeout_s": settings.stream_stall_timeout_seconds,
    }
    if kind is EngineKind.TENSORRT_LLM:
        return TensorRTLLMConfig(
            **shared,
            kv_cache_free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=settings.enable_block_reuse,
        )
    batching: dict[str, Any] = {
        **shared,
        "max_concurrent": settings.max_batch_size,
        "max_batch_tokens": settings.max_batch_tokens,
        "num_threads": settings.num_threads or None,
    }
    if kind is EngineKind.OPENVINO:
        return OpenVINOConfig(**batching, enable_prefix_caching=settings.enable_block_reuse)
    if kind is EngineKind.TRANSFORMERS:
        return TransformersConfig(
            **batching,
            device=settings.device,
            dtype=settings.dtype,
            num_blocks=settings.kv_cache_blocks or None,
            block_size=settings.kv_block_size,
        )
    raise ConfigurationError(f"engine {kind.value!r}: choose one first (service.engine.choice)")
