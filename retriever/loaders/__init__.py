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

Every file is read as hostile input, within :class:`~apihelper.retriever.limits.IngestLimits`
(regular files only, bounded reads, nesting, ``$ref`` and YAML alias budgets; see
``retriever/limits.py``). Content problems inside a file (a bad line, a broken ``$ref``, an
unparsable module, a limit hit) come back as LoadProblems in the LoadResult, naming the file and
the limit; only a file whose format cannot be told (or that cannot be read for detection)
raises :class:`~apihelper.errors.CorpusLoadError`. Docs come back with their text normalised
(:func:`clean_doc`: NFC, control characters removed, lone surrogates replaced).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apihelper.errors import CorpusLoadError
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits, LimitExceeded
from apihelper.retriever.loaders._files import decode_text, parse_json, problem_message, read_bytes
from apihelper.retriever.loaders._text import clean_text, clean_value
from apihelper.retriever.loaders.function_schema import looks_like_definitions
from apihelper.retriever.types import ApiDoc, CorpusFormat, LoadProblem, LoadResult

_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def _first_json_line(path: Path, limits: IngestLimits) -> Any:
    data = read_bytes(path, limits)
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw = data[start:end]
        start = end + 1
        if raw.strip():
            try:
                return parse_json(raw.decode("utf-8-sig"), limits)
            except (ValueError, LimitExceeded):
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


def detect_format(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> CorpusFormat:
    """The corpus format of ``path`` (see the module docstring); raises CorpusLoadError.

    Files are read as the loaders read them (regular files only, within ``limits``), so a file
    too big, too deep or not UTF-8 is refused here, naming the limit.
    """
    name = path.name.lower()
    if path.is_dir() or name.endswith(_ARCHIVE_SUFFIXES):
        return CorpusFormat.PYTHON
    if not path.exists():
        raise CorpusLoadError(str(path), "no such file or directory")
    try:
        if name.endswith(_JSONL_SUFFIXES):
            return _format_of_record(path, _first_json_line(path, limits))
        if name.endswith(_SPEC_SUFFIXES):
            document: Any
            if name.endswith(".json"):
                raw = decode_text(read_bytes(path, limits))
                try:
                    document = parse_json(raw, limits)
                except json.JSONDecodeError:
                    # Not one JSON document: maybe JSON lines under a .json name.
                    return _format_of_record(path, _first_json_line(path, limits))
            else:
                from apihelper.retriever.loaders.openapi import read_spec

                document = read_spec(path, limits)
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
    except CorpusLoadError:
        raise
    except Exception as exc:  # unreadable, not a regular file, too big or deep, bad JSON/YAML
        raise CorpusLoadError(str(path), problem_message(exc)) from exc
    raise CorpusLoadError(
        str(path), "unknown corpus file type (expected .json/.yaml/.yml/.jsonl, a wheel/sdist/zip, or a directory)"
    )


def clean_doc(doc: ApiDoc) -> ApiDoc:
    """``doc`` with its text normalised for embedding, indexing and prompts (see
    ``_text.clean_text``): key and title on one line, text and metadata strings cleaned."""
    metadata = clean_value(doc.metadata)
    return ApiDoc(
        key=clean_text(doc.key, multiline=False).strip(),
        title=clean_text(doc.title, multiline=False),
        text=clean_text(doc.text),
        index_text=clean_text(doc.index_text),
        metadata=metadata if isinstance(metadata, dict) else {},
        views=tuple(v for v in (clean_text(view) for view in doc.views) if v.strip()),
    )


def _clean_result(path: Path, result: LoadResult, limits: IngestLimits) -> LoadResult:
    problems = [
        LoadProblem(clean_text(p.path, multiline=False), clean_text(p.message, multiline=False))
        for p in result.problems
    ]
    docs: list[ApiDoc] = []
    metadata_bytes = 0  # the corpus's so far: each file's own limits bound one file, not their sum
    for doc in result.docs:
        if len(docs) >= limits.max_docs:
            problems.append(
                LoadProblem(str(path), str(LimitExceeded(limits, "max_docs", "more docs; the rest skipped")))
            )
            break
        try:
            cleaned = clean_doc(doc)
        except Exception as exc:  # metadata too deep to walk, say
            problems.append(LoadProblem(str(path), f"doc {doc.key[:80]!r} skipped: {problem_message(exc)}"))
            continue
        if not cleaned.key:
            problems.append(LoadProblem(str(path), "a doc whose key is empty once cleaned was skipped"))
            continue
        metadata_bytes += len(json.dumps(cleaned.metadata, ensure_ascii=False, default=str).encode())
        if metadata_bytes > limits.max_corpus_metadata_bytes:
            message = f"more metadata at {cleaned.key[:80]!r}; it and the rest skipped"
            problems.append(LoadProblem(str(path), str(LimitExceeded(limits, "max_corpus_metadata_bytes", message))))
            break
        docs.append(cleaned)
    return LoadResult(docs, problems)


def load_corpus(
    path: Path,
    fmt: CorpusFormat | None = None,
    *,
    include: Sequence[str] | None = None,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> tuple[CorpusFormat, LoadResult]:
    """Load ``path`` as ``fmt`` (detected when None); returns the format used and the result.

    ``include`` restricts Python packages to matching module names (fnmatch patterns, or a
    dotted package name that takes its submodules); other formats ignore it. Every loader works
    within ``limits`` and never raises for content; the docs come back cleaned
    (:func:`clean_doc`) and at most ``limits.max_docs`` of them.
    """
    path = Path(path)
    if fmt is None:
        fmt = detect_format(path, limits)
    return fmt, _clean_result(path, _load(path, fmt, include, limits), limits)


def _load(path: Path, fmt: CorpusFormat, include: Sequence[str] | None, limits: IngestLimits) -> LoadResult:
    if fmt is CorpusFormat.OPENAPI:
        from apihelper.retriever.loaders.openapi import load_openapi

        return load_openapi(path, limits)
    if fmt is CorpusFormat.PYTHON:
        from apihelper.retriever.loaders.python_pkg import load_python_package

        return load_python_package(path, include=include, limits=limits)
    if fmt is CorpusFormat.FUNCTIONS:
        from apihelper.retriever.loaders.function_schema import load_function_schemas

        return load_function_schemas(path, limits)
    if fmt is CorpusFormat.APIBENCH:
        from apihelper.retriever.loaders.apibench import load_apibench

        return load_apibench(path, limits)
    from apihelper.retriever.loaders.jsonl import load_jsonl

    return load_jsonl(path, limits)


__all__ = ["clean_doc", "detect_format", "load_corpus"]
