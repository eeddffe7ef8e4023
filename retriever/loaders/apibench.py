"""Loader for Gorilla APIBench API records (JSONL: domain, framework, functionality, api_name,
api_call, api_arguments, python_environment_requirements, example_code, performance, description).

Key: the record's ``api_call`` with whitespace collapsed (the eval format's APIBench key).

Duplicates: APIBench repeats api_call values (tensorflowhub: 696 records, 80 distinct calls,
often the same call described for different tasks). One doc is kept per key:

- records identical to an earlier one are dropped silently (counted in ``metadata["duplicates"]``);
- records with the same key but other content are merged: ``text`` is the first record (what
  Gorilla would show), ``index_text`` adds the other records' distinct api_name, functionality,
  domain and description, so every phrasing can still find the call;
  ``metadata["variants"]`` counts the distinct records merged.

``text`` is the record as Gorilla saw it: a compact JSON rendering of the fields above (not
``performance``). ``index_text`` puts api_name, functionality, domain and description first, then
the call and the first lines of example code. ``views``: each distinct record's own name,
functionality, domain and description (one vector per way the call is described). Bad lines are
LoadProblems ("file:line").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apihelper.retriever.doc_kinds import ApiBenchMetadata, DocKind
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.loaders._files import contained, problem_message
from apihelper.retriever.loaders._text import (
    collapse_whitespace,
    identifier_words,
    join_nonempty,
    json_lines,
    trim,
    unique,
)
from apihelper.retriever.types import ApiDoc, LoadProblem, LoadResult

TEXT_FIELDS = (
    "domain",
    "framework",
    "functionality",
    "api_name",
    "api_call",
    "api_arguments",
    "python_environment_requirements",
    "example_code",
    "description",
)
MAX_VARIANTS_INDEXED = 8
MAX_VIEWS = 16  # records of one call that get a vector of their own
MAX_INDEX = 2000
MAX_TEXT = 4000


def api_key(api_call: str) -> str:
    return collapse_whitespace(api_call)


@dataclass
class _Group:
    first: dict[str, Any]
    line: int
    contents: set[str] = field(default_factory=set)
    variants: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def record_text(record: dict[str, Any]) -> str:
    """The compact JSON rendering of a record that goes into the prompt."""
    shown = {name: record[name] for name in TEXT_FIELDS if name in record}
    return json.dumps(shown, ensure_ascii=False)


def _index_text(group: _Group) -> str:
    records = [group.first, *group.variants][:MAX_VARIANTS_INDEXED]
    parts: list[str] = []
    for name in ("api_name", "functionality", "domain", "description"):
        values = unique(collapse_whitespace(_as_text(r.get(name, ""))) for r in records)
        parts.extend(values)
    first = group.first
    parts.append(identifier_words(_as_text(first.get("api_name", ""))))
    parts.append(api_key(_as_text(first.get("api_call", ""))))
    example = first.get("example_code")
    example_text = "\n".join(example) if isinstance(example, list) else _as_text(example or "")
    parts.append(trim(example_text, 400))
    return trim(join_nonempty(parts), MAX_INDEX)


def record_view(record: dict[str, Any]) -> str:
    """One record's own description (name, functionality, domain, description): a view of its call."""
    return trim(
        join_nonempty(
            collapse_whitespace(_as_text(record.get(name, "")))
            for name in ("api_name", "functionality", "domain", "description")
        ),
        MAX_INDEX,
    )


def _doc(key: str, group: _Group) -> ApiDoc:
    first = group.first
    metadata = ApiBenchMetadata(
        kind=DocKind.APIBENCH_RECORD.value,
        api_call=first["api_call"],
        api_name=_as_text(first.get("api_name", "")),
        domain=_as_text(first.get("domain", "")),
        framework=_as_text(first.get("framework", "")),
        functionality=_as_text(first.get("functionality", "")),
        line=group.line,
        variants=1 + len(group.variants),
        duplicates=group.duplicates,
    )
    title = " — ".join(unique([metadata["api_name"], metadata["functionality"], metadata["domain"]])) or key
    return ApiDoc(
        key=key,
        title=trim(title, 200),
        text=trim(record_text(first), MAX_TEXT),
        index_text=_index_text(group),
        metadata=metadata,
        views=tuple(unique(record_view(r) for r in [first, *group.variants][:MAX_VIEWS])),
    )


@contained
def load_apibench(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadResult:
    """Load one APIBench JSONL file; never raises (problems are returned)."""
    problems: list[LoadProblem] = []
    groups: dict[str, _Group] = {}
    for number, where, record in json_lines(path, problems, limits):
        if not isinstance(record, dict) or not isinstance(record.get("api_call"), str):
            problems.append(LoadProblem(where, "not an APIBench record (no string 'api_call')"))
            continue
        key = api_key(record["api_call"])
        if not key:
            problems.append(LoadProblem(where, "empty api_call"))
            continue
        content = json.dumps(record, sort_keys=True, ensure_ascii=False)
        group = groups.get(key)
        if group is None:
            groups[key] = _Group(first=record, line=number, contents={content})
        elif content in group.contents:
            group.duplicates += 1
        else:
            group.contents.add(content)
            group.variants.append(record)

    docs: list[ApiDoc] = []
    for key, group in groups.items():
        try:
            docs.append(_doc(key, group))
        except Exception as exc:  # a hostile record is its own line's problem
            problems.append(LoadProblem(f"{path}:{group.line}", problem_message(exc)))
    return LoadResult(docs, problems)
