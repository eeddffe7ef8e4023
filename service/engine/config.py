"""Each engine's options as one typed, validated object, built once from Settings.

An engine option is a field here (with its check), a Settings field, and one line of
``from_settings``; the engines' ``load`` take the object, so nothing spells the options out again.
Test seams and runtime tuning that are not settings stay keyword arguments of ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass

from apihelper.errors import ConfigurationError
from apihelper.service.engine.choice import EngineKind
from apihelper.service.prompts import PromptFormat
from apihelper.service.settings import Settings


@dataclass(frozen=True)
class TransformersConfig:
    """transformers' continuous batching (``TransformersEngine.load`` documents each field)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"
    prompt_format: PromptFormat | None = None  # used where the model has no manifest
    max_model_len: int | None = None
    max_concurrent: int = 8
    block_size: int = 32
    num_blocks: int | None = None  # None: max_concurrent full contexts
    max_batch_tokens: int = 512
    seed: int | None = None
    num_threads: int | None = None  # None: torch's default
    stop_timeout_s: float = 10.0
    guided_decoding: bool = True
    stall_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.block_size < 4 or self.max_batch_tokens < 1:
            raise ConfigurationError(
                "transformers engine: max_concurrent and max_batch_tokens must be >= 1, block_size >= 4"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigurationError("transformers engine: num_threads must be >= 1")
        _check_stall(self.stall_timeout_s)


@dataclass(frozen=True)
class OpenVINOConfig:
    """OpenVINO GenAI's continuous batching (``OpenVINOEngine.load`` documents each field)."""

    prompt_format: PromptFormat | None = None  # used where the model has no manifest
    max_model_len: int | None = None
    max_concurrent: int = 8
    max_batch_tokens: int = 512
    kv_cache_gb: int = 0  # 0: the runtime sizes it
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # None: one per core
    guided_decoding: bool = True
    stall_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_batch_tokens < 1 or self.kv_cache_gb < 0:
            raise ConfigurationError(
                "openvino engine: max_concurrent and max_batch_tokens must be >= 1, kv_cache_gb >= 0"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigurationError("openvino engine: num_threads must be >= 1")
        _check_stall(self.stall_timeout_s)


@dataclass(frozen=True)
class TensorRTLLMConfig:
    """A compiled TensorRT-LLM engine (``TensorRTLLMEngine.load`` documents each field)."""

    prompt_format: PromptFormat | None = None  # only a fallback: the engine's manifest wins
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_block_reuse: bool = True
    guided_decoding: bool = True
    stall_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.kv_cache_free_gpu_memory_fraction <= 1.0:
            raise ConfigurationError(
                f"kv_cache_free_gpu_memory_fraction must be in (0, 1], got {self.kv_cache_free_gpu_memory_fraction}"
            )
        _check_stall(self.stall_timeout_s)


EngineConfig = TransformersConfig | OpenVINOConfig | TensorRTLLMConfig


def from_settings(kind: EngineKind, settings: Settings) -> EngineConfig:
    """The chosen engine's options from ``settings`` (``kind`` is never ``auto`` here)."""
    if kind is EngineKind.TENSORRT_LLM:
        return TensorRTLLMConfig(
            prompt_format=settings.prompt_format,
            kv_cache_free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=settings.enable_block_reuse,
            guided_decoding=settings.guided_decoding,
            stall_timeout_s=settings.stream_stall_timeout_seconds,
        )
    if kind is EngineKind.OPENVINO:
        return OpenVINOConfig(
            prompt_format=settings.prompt_format,
            max_concurrent=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            enable_prefix_caching=settings.enable_block_reuse,
            num_threads=settings.num_threads or None,
            guided_decoding=settings.guided_decoding,
            stall_timeout_s=settings.stream_stall_timeout_seconds,
        )
    if kind is EngineKind.TRANSFORMERS:
        return TransformersConfig(
            device=settings.device,
            dtype=settings.dtype,
            prompt_format=settings.prompt_format,
            max_concurrent=settings.max_batch_size,
            num_blocks=settings.kv_cache_blocks or None,
            block_size=settings.kv_block_size,
            max_batch_tokens=settings.max_batch_tokens,
            num_threads=settings.num_threads or None,
            guided_decoding=settings.guided_decoding,
            stall_timeout_s=settings.stream_stall_timeout_seconds,
        )
    raise ConfigurationError(f"engine {kind.value!r}: choose one first (service.engine.choice)")


def _check_stall(stall_timeout_s: float | None) -> None:
    if stall_timeout_s is not None and stall_timeout_s <= 0:
        raise ConfigurationError("stall_timeout_s must be positive (None: no stall timeout)")
