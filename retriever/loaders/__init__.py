"""Corpus loaders: one module per on-disk format, and :func:`load_corpus`, which picks one.

Format detection (:func:`detect_format`), used when no format is given:

- a directory, ``.whl``, ``.tar.gz``/``.tgz``/``.tar``/``.zip`` -> python;
- ``.json``/``.yaml``/``.yml`` holding one object with an ``openapi`` key -> openapi;
- ``.json`` holding tool definitions (a list of OpenAI tools or function definitions, an MCP
  ``{"tools": [...]}`` result) -> functions;
- JSON lines (``.jsonl``/``.ndjson``, or a ``.json`` that is really JSONL, like APIBench's
  ``torchhub_train.json``): the first object decides: a tool definition -> functions,
  ``api_call`` -> apibench, ``id`` and ``text`` -> jsonl. Question files (``code``/``api_data``
  lines, ``question``/``answer``, or BFCL's ``question``/``function``) are not corpora and are
  refused.

Content problems inside a file (a bad line, a broken ``$ref``, an unparsable module) come back
as LoadProblems in the LoadResult; only a file whose format cannot be told (or that cannot be
opened for detection) raises :class:`~service.errors.CorpusLoadError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apihelper.errors import CorpusLoadError
from apihelper.retriever.loaders.function_schema import looks_like_definitions
from apihelper.retriever.types import CorpusFormat, LoadResult

_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def _first_json_line(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def _is_question_record(record: Any) -> bool:
    """A line of a question file: APIBench training/eval lines, the project's, or BFCL's."""
    return isinstance(record, dict) and (
        "api_data" in record or ("question" in record and ("answer" in record or "function" in record))
    )


def _format_of_record(path: Path, record: Any) -> CorpusFormat:
    if not isinstance(record, dict):
        raise CorpusLoadError(str(path), "first line is not a JSON object; cannot tell the corpus format")
    if _is_question_record(record):
        raise CorpusLoadError(str(path), "this is a question/eval file, not a corpus")
    if looks_like_definitions(record):
        return CorpusFormat.FUNCTIONS
    if "api_call" in record:
        return CorpusFormat.APIBENCH
    if "id" in record and "text" in record:
        return CorpusFormat.JSONL
    raise CorpusLoadError(
        str(path),
        f"JSON lines with keys {sorted(record)[:8]} match no corpus format "
        "(need a tool definition, api_call, or id+text)",
    )


def detect_format(path: Path) -> CorpusFormat:
    """The corpus format of ``path`` (see the module docstring); raises CorpusLoadError."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(_ARCHIVE_SUFFIXES):
        return CorpusFormat.PYTHON
    if not path.is_file():
        raise CorpusLoadError(str(path), "no such file or directory")
    try:
        if name.endswith(_JSONL_SUFFIXES):
            return _format_of_record(path, _first_json_line(path))
        if name.endswith(_SPEC_SUFFIXES):
            raw = path.read_text(encoding="utf-8")
            document: Any
            if name.endswith(".json"):
                try:
                    document = json.loads(raw)
                except json.JSONDecodeError:
                    # Not one JSON document: maybe JSON lines under a .json name.
                    return _format_of_record(path, _first_json_line(path))
            else:
                import yaml

                try:
                    document = yaml.safe_load(raw)
                except yaml.YAMLError as exc:
                    raise CorpusLoadError(str(path), f"not valid YAML: {exc}") from exc
            if isinstance(document, dict) and "openapi" in document:
                return CorpusFormat.OPENAPI
            if looks_like_definitions(document):
                return CorpusFormat.FUNCTIONS
            if _is_question_record(document):
                raise CorpusLoadError(str(path), "this is a question/eval file, not a corpus")
            if isinstance(document, dict) and "swagger" in document:
                raise CorpusLoadError(str(path), "Swagger 2.0 is not supported; convert it to OpenAPI 3.x")
            raise CorpusLoadError(
                str(path), "a JSON/YAML file that is neither an OpenAPI spec nor tool definitions is not a known corpus"
            )
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusLoadError(str(path), f"cannot read file: {exc}") from exc
    raise CorpusLoadError(
        str(path), "unknown corpus file type (expected .json/.yaml/.yml/.jsonl, a wheel/sdist/zip, or a directory)"
    )


def load_corpus(
    path: Path,
    fmt: CorpusFormat | None = None,
    *,
    include: Sequence[str] | None = None,
) -> tuple[CorpusFormat, LoadResult]:
    """Load ``path`` as ``fmt`` (detected when None); returns the format used and the result.

    ``include`` restricts Python packages to matching module names (fnmatch patterns, or a
    dotted package name that takes its submodules); other formats ignore it.
    """
    path = Path(path)
    if fmt is None:
        fmt = detect_format(path)
    if fmt is CorpusFormat.OPENAPI:
        from apihelper.retriever.loaders.openapi import load_openapi

        return fmt, load_openapi(path)
    if fmt is CorpusFormat.PYTHON:
        from apihelper.retriever.loaders.python_pkg import load_python_package

        return fmt, load_python_package(path, include=include)
    if fmt is CorpusFormat.FUNCTIONS:
        from apihelper.retriever.loaders.function_schema import load_function_schemas

        return fmt, load_function_schemas(path)
    if fmt is CorpusFormat.APIBENCH:
        from apihelper.retriever.loaders.apibench import load_apibench

        return fmt, load_apibench(path)
    from apihelper.retriever.loaders.jsonl import load_jsonl

    return fmt, load_jsonl(path)


__all__ = ["detect_format", "load_corpus"]
