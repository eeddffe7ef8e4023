"""The model manifest: the on-disk contract between the offline build and the service.

``apihelper-build`` writes ``apihelper_manifest.json`` next to every model or engine it makes
(the development model, a merged Gorilla checkpoint, a TensorRT-LLM engine); the service reads it
to pick the prompt format and to refuse artifacts it cannot run. A Hugging Face directory without
a manifest still loads: the prompt format then comes from settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apihelper.errors import ConfigurationError
from apihelper.service.engine.protocol import ApiChoice
from apihelper.service.prompts import PromptFormat

MANIFEST_NAME = "apihelper_manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelManifest:
    kind: str  # "dev-model" | "hf-checkpoint" | "tensorrt-llm-engine"
    name: str
    prompt_format: PromptFormat
    random_weights: bool = False
    max_model_len: int = 2048
    created: str = ""  # ISO 8601, UTC
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # How constrained answers choose their API ("model" or "retriever"), as chosen for this
    # model on the validation splits (docs/answers.md); absent in older manifests: "model".
    api_choice: str = "model"

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        data = asdict(self)
        data["prompt_format"] = self.prompt_format.value
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path


def read_manifest(directory: Path) -> ModelManifest | None:
    """The manifest in ``directory``, or None when there is none."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ConfigurationError(
                f"{path}: manifest schema_version {data.get('schema_version')!r}, "
                f"this apihelper reads {SCHEMA_VERSION}; rebuild the artifact"
            )
        return ModelManifest(
            kind=str(data["kind"]),
            name=str(data["name"]),
            prompt_format=PromptFormat(data["prompt_format"]),
            random_weights=bool(data.get("random_weights", False)),
            max_model_len=int(data.get("max_model_len", 2048)),
            created=str(data.get("created", "")),
            details=dict(data.get("details", {})),
            api_choice=str(data.get("api_choice", "model")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{path}: unreadable manifest ({exc})") from exc


def manifest_api_choice(manifest: ModelManifest | None) -> ApiChoice:
    """The manifest's API-choice policy (``model`` without a manifest)."""
    if manifest is None:
        return ApiChoice.MODEL
    try:
        return ApiChoice(manifest.api_choice)
    except ValueError as exc:
        raise ConfigurationError(
            f"manifest of {manifest.name}: api_choice {manifest.api_choice!r} is not one of "
            f"{', '.join(c.value for c in ApiChoice)}"
        ) from exc
