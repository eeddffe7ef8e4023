"""Each engine's options: one typed object built once from Settings, validated when built."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.engine.choice import EngineKind
from apihelper.service.engine.config import OpenVINOConfig, TensorRTLLMConfig, TransformersConfig, from_settings
from apihelper.service.prompts import PromptFormat
from apihelper.service.settings import load_settings


def test_each_engine_gets_its_options_from_the_settings() -> None:
    settings = load_settings(
        [
            "--device", "cuda:1", "--prompt-format", "chat_tools", "--max-batch-size", "3", "--max-batch-tokens", "64",
            "--kv-cache-blocks", "99", "--num-threads", "2", "--no-guided-decoding", "--no-enable-block-reuse",
            "--stream-stall-timeout-seconds", "7", "--kv-cache-free-gpu-memory-fraction", "0.5",
        ],
        {},
    )  # fmt: skip
    shared: dict[str, Any] = {
        "prompt_format": PromptFormat.CHAT_TOOLS,
        "guided_decoding": False,
        "stall_timeout_s": 7.0,
    }
    batching: dict[str, Any] = {**shared, "max_concurrent": 3, "max_batch_tokens": 64, "num_threads": 2}
    assert from_settings(EngineKind.TRANSFORMERS, settings) == TransformersConfig(
        **batching, device="cuda:1", num_blocks=99
    )
    assert from_settings(EngineKind.OPENVINO, settings) == OpenVINOConfig(**batching, enable_prefix_caching=False)
    assert from_settings(EngineKind.TENSORRT_LLM, settings) == TensorRTLLMConfig(
        **shared, kv_cache_free_gpu_memory_fraction=0.5, enable_block_reuse=False
    )


def test_zero_means_the_engine_default() -> None:
    config = from_settings(EngineKind.TRANSFORMERS, load_settings([], {}))
    assert isinstance(config, TransformersConfig)
    assert config.num_blocks is None and config.num_threads is None


def test_auto_must_be_resolved_first() -> None:
    with pytest.raises(ConfigurationError, match="choose one first"):
        from_settings(EngineKind.AUTO, load_settings([], {}))


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        (TransformersConfig, {"max_concurrent": 0}),
        (TransformersConfig, {"block_size": 2}),
        (TransformersConfig, {"num_threads": 0}),
        (TransformersConfig, {"stall_timeout_s": 0.0}),
        (TransformersConfig, {"max_batch_tokens": 0}),
        (OpenVINOConfig, {"max_batch_tokens": 0}),
        (OpenVINOConfig, {"kv_cache_gb": -1}),
        (OpenVINOConfig, {"num_threads": 0}),
        (TensorRTLLMConfig, {"kv_cache_free_gpu_memory_fraction": 1.5}),
        (TensorRTLLMConfig, {"stall_timeout_s": -1.0}),
    ],
)
def test_bad_options_are_refused_when_built(kind: type, changes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        dataclasses.replace(kind(), **changes)
