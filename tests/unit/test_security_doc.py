"""docs/security.md names every HTTP limit setting with its default (the page is the reference)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.settings import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_every_http_limit_is_documented_with_its_default() -> None:
    text = PAGE.read_text()
    fields = [f for f in dataclasses.fields(Settings) if f.name.startswith("http_") and f.name != "http_port"]
    assert len(fields) >= 8
    for f in fields:
        default = f.default
        shown = f"{default:g}" if isinstance(default, float) else ("" if default == "" else str(default))
        assert f"`{f.name}` ({shown}" in text, f.name


@pytest.mark.parametrize(
    "field", ["http_max_header_bytes", "http_max_headers", "http_max_connections", "http_header_timeout_seconds"]
)
def test_http_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        overrides: dict[str, Any] = {field: 0}
        Settings(**overrides)
