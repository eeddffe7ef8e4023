"""What the OpenVINO engine loads, decided before any process starts (``resolve_model``): a GGUF
file, a staged GGUF directory, an IR directory; everything else refused with one line. No
openvino here: the engine's behaviour is ``tests/integration/test_engine_contract.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import ModelManifest
from apihelper.service.engine.openvino_engine import DEFAULT_MAX_MODEL_LEN, resolve_model
from apihelper.service.prompts import PromptFormat


def staged(tmp_path: Path, *, gguf_file: str = "m.gguf", context: int = 8192, kind: str = "gguf") -> Path:
    out = tmp_path / "staged"
    out.mkdir()
    (out / "m.gguf").write_bytes(b"GGUF")
    details = {"gguf_file": gguf_file, "context_length": context}
    ModelManifest(kind=kind, name="SmolLM2", prompt_format=PromptFormat.CHAT_TOOLS, details=details).write(out)
    return out


def test_a_bare_gguf_file_needs_a_prompt_format(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigurationError, match="set the prompt format"):
        resolve_model(gguf, None, None)
    source = resolve_model(gguf, PromptFormat.GORILLA_V0, None)
    assert (source.path, source.prompt_format, source.max_model_len) == (
        gguf,
        PromptFormat.GORILLA_V0,
        DEFAULT_MAX_MODEL_LEN,
    )


def test_a_staged_directory_names_its_file_and_its_manifest_wins(tmp_path: Path) -> None:
    model = staged(tmp_path)
    source = resolve_model(model, PromptFormat.GORILLA_V0, None)
    assert source.path == model / "m.gguf" and source.name == "SmolLM2"
    assert source.prompt_format is PromptFormat.CHAT_TOOLS and source.max_model_len == 2048
    assert resolve_model(model, None, 4096).max_model_len == 4096


def test_a_limit_beyond_the_context_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="context length 8192"):
        resolve_model(staged(tmp_path), None, 9000)


def test_a_staged_directory_without_its_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="missing"):
        resolve_model(staged(tmp_path, gguf_file="other.gguf"), None, None)


def test_other_artifacts_are_refused_naming_what_runs_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'hf-checkpoint' artifact"):
        resolve_model(staged(tmp_path, kind="hf-checkpoint"), None, None)
    bare = tmp_path / "hf"
    bare.mkdir()
    with pytest.raises(ConfigurationError, match="--engine transformers"):
        resolve_model(bare, PromptFormat.CHAT_TOOLS, None)
    with pytest.raises(ConfigurationError, match="no such"):
        resolve_model(tmp_path / "nowhere", PromptFormat.CHAT_TOOLS, None)


def test_an_ir_directory_without_a_manifest_takes_the_configured_format(tmp_path: Path) -> None:
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")
    with pytest.raises(ConfigurationError, match="set the prompt format"):
        resolve_model(ir, None, None)
    assert resolve_model(ir, PromptFormat.CHAT_TOOLS, None).path == ir
