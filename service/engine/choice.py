"""Which engine serves a model: ``--engine auto`` resolved from the model on disk and the device.

- a TensorRT-LLM engine directory (manifest kind ``tensorrt-llm-engine``): ``tensorrt_llm``;
- a device that names CUDA: ``transformers`` (OpenVINO here runs on the CPU only);
- what OpenVINO runs (a ``.gguf`` file, a staged-GGUF or OpenVINO IR directory) where
  ``openvino_genai`` is installed: ``openvino``;
- anything else, a Hugging Face directory such as the random-weights dev model included (OpenVINO
  would need an IR export of it): ``transformers``.

Pure apart from reading the manifest and asking whether ``openvino_genai`` is importable (without
importing it).
"""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path

from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import read_manifest

TENSORRT_LLM_KIND = "tensorrt-llm-engine"
# Manifest kinds the OpenVINO engine runs: a staged GGUF file, an OpenVINO IR export.
OPENVINO_KINDS = ("gguf", "openvino-ir")


class EngineKind(str, enum.Enum):
    AUTO = "auto"
    TRANSFORMERS = "transformers"
    OPENVINO = "openvino"
    TENSORRT_LLM = "tensorrt_llm"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None


def openvino_can_run(model: Path) -> bool:
    """Whether ``model`` is something the OpenVINO engine loads (by its form on disk)."""
    if model.is_file():
        return model.suffix == ".gguf"
    if not model.is_dir():
        return False
    manifest = read_manifest(model)
    if manifest is not None:
        return manifest.kind in OPENVINO_KINDS
    return (model / "openvino_model.xml").is_file()


def choose_engine(
    requested: EngineKind, model: Path, device: str, *, openvino_available: bool | None = None
) -> EngineKind:
    """The engine for ``model``: ``requested`` unless it is ``auto`` (rules in the module doc)."""
    if requested is not EngineKind.AUTO:
        return requested
    if model.is_dir():
        manifest = read_manifest(model)
        if manifest is not None and manifest.kind == TENSORRT_LLM_KIND:
            return EngineKind.TENSORRT_LLM
    on_cuda = device.startswith("cuda")
    if openvino_can_run(model):
        if on_cuda:
            raise ConfigurationError(
                f"{model}: a GGUF or OpenVINO model runs on the CPU (the OpenVINO engine); "
                "use --device cpu, or a Hugging Face directory for CUDA"
            )
        available = openvino_installed() if openvino_available is None else openvino_available
        if not available:
            raise ConfigurationError(f"{model}: the OpenVINO engine runs this model; pip install openvino-genai")
        return EngineKind.OPENVINO
    return EngineKind.TRANSFORMERS
