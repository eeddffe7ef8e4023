"""The transformers engine on the real dev model: what only it has (its manifest, its load checks).
The Engine contract (streaming, stops, cancellation, guided decoding, ...) is
``test_engine_contract.py``, run against every CPU engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from apihelper.build.dev_model import make_dev_model
from apihelper.errors import ConfigurationError
from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.protocol import Engine
from apihelper.service.prompts import PromptFormat

pytest.importorskip("torch")
pytest.importorskip("transformers")

from apihelper.service.engine.transformers_engine import TransformersEngine

# The real transformers engine (5.x continuous batching); deselected in the compat env.
pytestmark = pytest.mark.transformers5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dev-model")
    make_dev_model(out)
    return out


@pytest_asyncio.fixture(scope="module")
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(model_dir, TransformersConfig(device="cpu", seed=0))
    yield eng
    await eng.shutdown()


async def test_is_an_engine_with_info_from_the_manifest(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    info = engine.info
    assert info.kind == "transformers"
    assert info.prompt_format is PromptFormat.GORILLA_V0
    assert info.random_weights is True
    assert info.max_model_len == 2048
    assert info.extra["device"] == "cpu"
    await engine.check_health()


async def test_load_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        await TransformersEngine.load(tmp_path / "nope", TransformersConfig(device="cpu"))


async def test_load_fails_fast_when_the_kv_cache_does_not_fit(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="num_blocks"):
        await TransformersEngine.load(model_dir, TransformersConfig(device="cpu", num_blocks=10**9))


async def test_load_refuses_a_context_longer_than_the_model(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_position_embeddings"):
        await TransformersEngine.load(model_dir, TransformersConfig(device="cpu", max_model_len=4096))
