"""The real thing on a GPU: build a TensorRT-LLM engine from the dev model, load it, stream.

Runs only where tensorrt_llm (1.2.x) and a CUDA GPU are present, i.e. in NVIDIA's TensorRT-LLM
release container on a GPU machine (``pytest -m gpu``); skipped elsewhere with the reason.
Building even this tiny engine takes a minute or two (TensorRT compiles kernels).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apihelper.service.engine.config import TensorRTLLMConfig
from apihelper.service.engine.protocol import EngineOutput, EngineRequest, FinishReason, SamplingParams


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt_llm") is None:
        return "tensorrt_llm is not installed (run in the TensorRT-LLM 1.2.x release container)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apihelper.build.dev_model import make_dev_model
    from apihelper.build.trtllm_build import build_engine

    root = tmp_path_factory.mktemp("trtllm")
    # Head size 64 (256 / 4): TensorRT-LLM's attention kernels cover the usual head sizes, and
    # the dev model's default (64 / 4 = 16) is not one of them.
    make_dev_model(
        root / "dev-model",
        hidden_size=256,
        intermediate_size=688,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=512,
    )
    build_engine(
        root / "dev-model",
        root / "engine",
        dtype="float16",
        max_batch_size=4,
        max_seq_len=512,
        max_num_tokens=512,
        progress=False,
    )
    return root / "engine"


async def test_build_load_and_stream(engine_dir: Path) -> None:
    from apihelper.service.engine.tensorrt_llm_engine import TensorRTLLMEngine

    engine = await TensorRTLLMEngine.load(engine_dir, TensorRTLLMConfig(kv_cache_free_gpu_memory_fraction=0.2))
    try:
        await engine.check_health()
        request = EngineRequest(
            request_id="gpu-1",
            prompt="USER: Create a new session\nASSISTANT:",
            sampling=SamplingParams(max_tokens=24, temperature=0.0),
        )
        stream: AsyncIterator[EngineOutput] = engine.stream(request)
        outs = [out async for out in stream]
        assert len(outs) >= 2, "a streamed generation has several deltas"
        assert outs[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert all(o.finish_reason is None for o in outs[:-1])
        assert 0 < outs[-1].completion_tokens <= 24
        assert outs[-1].prompt_tokens == engine.count_tokens(request.prompt)
        assert engine.num_in_flight == 0
        stats = engine.stats()
        assert stats.running == 0 and stats.waiting == 0
    finally:
        await engine.shutdown()
