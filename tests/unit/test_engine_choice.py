"""``--engine auto``: which engine serves which model, from the model on disk and the device."""

from __future__ import annotations

from pathlib import Path

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.engine.choice import EngineKind, choose_engine
from apihelper.service.engine.manifest import ModelManifest
from apihelper.service.prompts import PromptFormat


def _dir_with(tmp_path: Path, kind: str, name: str = "") -> Path:
    out = tmp_path / (name or kind)
    out.mkdir()
    ModelManifest(kind=kind, name=kind, prompt_format=PromptFormat.CHAT_TOOLS).write(out)
    return out


def test_an_explicit_engine_is_kept(tmp_path: Path) -> None:
    for kind in (EngineKind.TRANSFORMERS, EngineKind.OPENVINO, EngineKind.TENSORRT_LLM):
        assert choose_engine(kind, tmp_path, "auto", openvino_available=False) is kind


def test_a_tensorrt_llm_engine_directory_gets_tensorrt_llm(tmp_path: Path) -> None:
    model = _dir_with(tmp_path, "tensorrt-llm-engine")
    assert choose_engine(EngineKind.AUTO, model, "auto", openvino_available=True) is EngineKind.TENSORRT_LLM


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_gguf_and_ir_go_to_openvino_on_a_cpu(tmp_path: Path, device: str) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")
    for model in (gguf, _dir_with(tmp_path, "gguf"), _dir_with(tmp_path, "openvino-ir"), ir):
        assert choose_engine(EngineKind.AUTO, model, device, openvino_available=True) is EngineKind.OPENVINO


def test_a_gguf_without_openvino_says_what_to_install(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigurationError, match="pip install openvino-genai"):
        choose_engine(EngineKind.AUTO, gguf, "cpu", openvino_available=False)


def test_a_gguf_on_cuda_is_refused(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigurationError, match="--device cpu"):
        choose_engine(EngineKind.AUTO, gguf, "cuda:1", openvino_available=True)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_hugging_face_directories_and_the_dev_model_go_to_transformers(tmp_path: Path, device: str) -> None:
    for model in (_dir_with(tmp_path, "dev-model"), _dir_with(tmp_path, "hf-checkpoint"), tmp_path / "no-manifest"):
        assert choose_engine(EngineKind.AUTO, model, device, openvino_available=True) is EngineKind.TRANSFORMERS
