"""Loader for generic JSONL corpora: one ``{"id", "title", "text", "metadata"}`` object a line.

Key: ``id`` (a string or number, as a string). ``title`` defaults to the id. ``text`` is required.
``metadata`` is the user's and is stored as given, but for ``kind``: these docs are always
``DocKind.TEXT`` (a record cannot declare itself a REST operation and be checked as one).
``index_text`` is the record's own ``index_text`` when present, else title and text. A repeated id
keeps the first line and reports the others. Bad lines are LoadProblems ("file:line").
"""

from __future__ import annotations

from pathlib import Path

from apihelper.retriever.doc_kinds import DocKind
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.loaders._files import contained
from apihelper.retriever.loaders._text import join_nonempty, json_lines
from apihelper.retriever.types import ApiDoc, LoadProblem, LoadResult


@contained
def load_jsonl(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadResult:
    """Load one JSONL corpus file; never raises (problems are returned)."""
    problems: list[LoadProblem] = []
    docs: dict[str, ApiDoc] = {}
    for _, where, record in json_lines(path, problems, limits):
        if not isinstance(record, dict):
            problems.append(LoadProblem(where, "not a JSON object"))
            continue
        raw_id = record.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id).strip() == "":
            problems.append(LoadProblem(where, "missing or non-scalar 'id'"))
            continue
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(LoadProblem(where, "missing or empty 'text'"))
            continue
        key = str(raw_id).strip()
        if key in docs:
            problems.append(LoadProblem(where, f"duplicate id {key!r}; kept the first"))
            continue
        title = record.get("title")
        title = str(title) if title not in (None, "") else key
        metadata = record.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            problems.append(LoadProblem(where, "'metadata' is not an object; ignored"))
            metadata = None
        index_text = record.get("index_text")
        if not isinstance(index_text, str) or not index_text.strip():
            index_text = join_nonempty([title if title != key else None, text])
        docs[key] = ApiDoc(
            key=key,
            title=title,
            text=text,
            index_text=index_text,
            metadata={**(metadata or {}), "kind": DocKind.TEXT.value},
        )
    return LoadResult(list(docs.values()), problems)
