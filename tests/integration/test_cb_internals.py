"""The transformers manager's private state that the transformers engine reads
(``service.engine.cb_internals``), checked against the installed transformers on a real started
manager: when transformers renames or moves any of it, this fails and names what moved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from apihelper.service.engine import cb_internals
from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.protocol import EngineRequest, SamplingParams

pytest.importorskip("torch")
pytest.importorskip("transformers")

from apihelper.service.engine.transformers_engine import TransformersEngine

pytestmark = pytest.mark.transformers5


@pytest_asyncio.fixture(scope="module")
async def engine(dev_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(dev_model_dir, TransformersConfig(device="cpu", max_concurrent=2))
    yield eng
    await eng.shutdown()


def test_the_failed_status_is_transformers_own() -> None:
    from transformers.generation.continuous_batching.requests import RequestStatus

    assert int(RequestStatus.FAILED) == cb_internals.FAILED_STATUS


async def test_every_private_read_finds_its_state(engine: TransformersEngine) -> None:
    import transformers

    manager: Any = engine._manager
    assert cb_internals.missing_internals(manager) == [], transformers.__version__
    assert cb_internals.processor_ready(manager)
    assert cb_internals.fatal_error(manager) is None
    load = cb_internals.scheduler_load(manager)
    assert load is not None and load.kv_cache_usage is not None


async def test_a_running_request_shows_in_the_scheduler_and_its_handler_is_dropped(engine: TransformersEngine) -> None:
    manager: Any = engine._manager
    stream = engine.stream(EngineRequest("internals", "USER: hi\nASSISTANT:", SamplingParams(max_tokens=1500)))
    await anext(stream)
    load = cb_internals.scheduler_load(manager)
    assert load is not None and load.running + load.waiting == 1
    flight = engine._in_flight["internals"]
    assert flight.manager_id in manager.output_router.result_handlers
    await stream.aclose()  # cancelled: the engine drops the handler through cb_internals
    assert flight.manager_id not in manager.output_router.result_handlers
