"""Small text helpers shared by the corpus loaders (identifier splitting, trimming, joining,
reading JSON lines).

Everything here is pure and cheap; loaders use these to build ``ApiDoc.text`` (what the model
reads) and ``ApiDoc.index_text`` (what is embedded and BM25-indexed).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from apihelper.retriever.invisible import INVISIBLE
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.loaders._files import decode_text, parse_json, problem_message, read_bytes
from apihelper.retriever.types import LoadProblem

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_WHITESPACE = re.compile(r"\s+")


def split_identifier(name: str) -> list[str]:
    """Split ``createFromParams``, ``create_from_params``, ``/folders/{name}/mkdir`` into words.

    Words come back lower-case, in order, duplicates kept (callers dedupe when they want to).
    BM25 with the ``standard`` tokenizer would otherwise see ``create_from_params`` as one token
    that no natural-language question contains.
    """
    words: list[str] = []
    for chunk in _NON_WORD.split(name):
        if not chunk:
            continue
        for word in _CAMEL_BOUNDARY.split(chunk):
            if word:
                words.append(word.lower())
    return words


def identifier_words(*names: str) -> str:
    """The words of several identifiers, joined by spaces, first occurrence order, no repeats."""
    return " ".join(unique(word for name in names for word in split_identifier(name)))


# Abbreviations common in API identifiers, spelled out so that a question in plain words
# ("make a directory", "virtual folder") meets the identifier ("mkdir", "vfolder"). A general
# programming vocabulary, not tuned to any corpus' questions (bench/retrieval/README.md).
ABBREVIATIONS = {
    "mkdir": "make directory",
    "rmdir": "remove directory",
    "ls": "list",
    "rm": "remove",
    "mv": "move",
    "cp": "copy",
    "dir": "directory",
    "dirs": "directories",
    "info": "information",
    "config": "configuration",
    "conf": "configuration",
    "cfg": "configuration",
    "auth": "authentication",
    "admin": "administrator",
    "env": "environment",
    "vfolder": "virtual folder",
    "vfolders": "virtual folders",
    "bgtask": "background task",
    "repo": "repository",
    "stats": "statistics",
    "msg": "message",
    "pwd": "password",
    "passwd": "password",
    "del": "delete",
    "img": "image",
    "id": "identifier",
    "pty": "terminal",
    "tty": "terminal",
    "mem": "memory",
    "exec": "execute",
    "init": "initialize",
    "gen": "generate",
    "num": "number",
    "src": "source",
    "dst": "destination",
    "tmp": "temporary",
    "ws": "websocket",
    "usr": "user",
    "perm": "permission",
    "perms": "permissions",
    "attr": "attribute",
    "attrs": "attributes",
    "param": "parameter",
    "params": "parameters",
    "spec": "specification",
    "db": "database",
    "sched": "scheduler",
    "op": "operation",
    "ops": "operations",
    "stat": "status",
}
# The usual synonyms of CRUD verbs in API names ("create" is what people call "add a new ...").
VERB_SYNONYMS = {
    "create": "add new",
    "delete": "remove",
    "remove": "delete",
    "list": "all",
    "get": "show",
    "update": "modify change",
    "modify": "update change",
    "add": "create new",
    "rename": "change name",
    "purge": "permanently delete",
    "detail": "information",
    "set": "update",
}


def expanded_words(text: str) -> str:
    """``text`` with abbreviations spelled out and CRUD verbs' synonyms right after the word:
    "mkdir folders name" -> "mkdir make directory folders name"; "create session" ->
    "create add new session". (Right after the word, not appended at the end: on the Backend.AI
    dev sets the appended form cost REST dense top-1 0.80 -> 0.72; MiniLM reads word order.)"""
    out: list[str] = []
    for word in text.split():
        out.append(word)
        lower = word.lower()
        if lower in ABBREVIATIONS:
            out.append(ABBREVIATIONS[lower])
        if lower in VERB_SYNONYMS:
            out.append(VERB_SYNONYMS[lower])
    return " ".join(out)


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats (and without empty strings)."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def trim(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a word boundary where possible, with '…'."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip() + "…"


def first_paragraphs(text: str, limit: int) -> str:
    """Leading paragraphs of a docstring or description, whitespace-collapsed, trimmed to ``limit``."""
    paragraphs = [collapse_whitespace(p) for p in re.split(r"\n\s*\n", text.strip())]
    out: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if not paragraph:
            continue
        if out and size + len(paragraph) > limit:
            break
        out.append(paragraph)
        size += len(paragraph) + 1
    return trim(" ".join(out), limit)


def join_nonempty(parts: Iterable[str | None], sep: str = "\n") -> str:
    return sep.join(part for part in parts if part)


def json_lines(
    path: Path, problems: list[LoadProblem], limits: IngestLimits = DEFAULT_LIMITS
) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "path:line", parsed value)`` for each non-blank line of a JSONL file.

    The file is read within ``limits.max_file_bytes`` (regular files only); each line is decoded
    and parsed on its own, so an unreadable file is one problem and a line that is not UTF-8 or
    not JSON (or nested past ``limits.max_depth``) is that line's problem; the rest still comes.
    """
    try:
        data = read_bytes(path, limits)
    except Exception as exc:  # OSError, FileRefused, LimitExceeded
        problems.append(LoadProblem(str(path), problem_message(exc)))
        return
    start = 0
    number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        raw = data[start:end]
        start = end + 1
        number += 1
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = parse_json(decode_text(raw) if number == 1 else raw.decode("utf-8"), limits)
        except Exception as exc:  # bad UTF-8, bad JSON, too deep, a huge integer
            problems.append(LoadProblem(where, problem_message(exc)))
            continue
        yield number, where, record


_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str, *, multiline: bool = True) -> str:
    """``text`` ready to embed, index and show: lone surrogates replaced (U+FFFD), line breaks
    made ``\\n``, controls and format characters (zero-width, bidirectional: ``INVISIBLE``) removed,
    NFC-normalised.
    ``multiline=False`` also turns newlines and tabs into spaces (titles, keys)."""
    text = _SURROGATES.sub("\ufffd", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = INVISIBLE.sub("", text)
    if not multiline:
        text = text.replace("\n", " ").replace("\t", " ")
    return unicodedata.normalize("NFC", text)


def clean_value(value: Any) -> Any:
    """A JSON-like value with every string (keys too) passed through :func:`clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)) if isinstance(k, str) else k: clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    return value
