"""Reading corpus files as hostile input: bounded reads of regular files only, JSON and YAML
parsed within :class:`~apihelper.retriever.limits.IngestLimits`, and one wording for problems.

- :func:`read_bytes` opens without blocking (a FIFO cannot hang it), refuses anything that is
  not a regular file (``/dev/zero``, a FIFO, a socket), and with ``root`` refuses a symlink that
  resolves outside the corpus root; it reads at most the limit plus one byte, so a file that
  grows while being read still cannot cost more than the limit.
- :func:`parse_json` and :func:`parse_yaml` bound the nesting depth (and YAML's aliases: every
  alias copies its anchor's subtree, and the copies are counted), and replace lone surrogates
  (``"\\ud800"`` in JSON) so later UTF-8 encoding cannot fail.
- :func:`problem_message` turns any exception met while loading a file into the one-line
  message of its ``LoadProblem``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec

from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits, LimitExceeded
from apihelper.retriever.types import LoadProblem, LoadResult

_SURROGATE = re.compile("[\ud800-\udfff]")


class FileRefused(Exception):
    """A path that is not read at all: not a regular file, or a symlink leaving the corpus root."""


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (symlinks followed) to somewhere under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def read_bytes(
    path: Path,
    limits: IngestLimits = DEFAULT_LIMITS,
    *,
    limit: str = "max_file_bytes",
    root: Path | None = None,
) -> bytes:
    """The bytes of the regular file ``path``, at most ``getattr(limits, limit)`` of them.

    Raises FileRefused (not a regular file; a symlink out of ``root``), LimitExceeded (bigger
    than the limit) or OSError.
    """
    if root is not None and path.is_symlink() and not inside(path, root):
        raise FileRefused(f"a symlink to {os.readlink(path)!r}, outside the corpus directory; not read")
    cap = int(getattr(limits, limit))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"not a regular file ({_file_kind(info.st_mode)}); not read")
        if info.st_size > cap:
            raise LimitExceeded(limits, limit, f"{info.st_size} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = os.read(fd, min(1024 * 1024, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise LimitExceeded(limits, limit, f"more than {cap} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def decode_text(data: bytes) -> str:
    """UTF-8 text (a BOM dropped); raises UnicodeDecodeError."""
    return data.decode("utf-8-sig")


def bounded_tree(value: Any, limits: IngestLimits) -> Any:
    """``value`` (parsed JSON/YAML) checked for depth (objects and arrays nested, the outermost
    being 1), lone surrogates replaced by U+FFFD.

    Raises LimitExceeded past ``limits.max_depth``.
    """
    found = [False]

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, (dict, list)) and depth > limits.max_depth:
            raise LimitExceeded(limits, "max_depth", f"values nested deeper than {limits.max_depth}")
        if isinstance(node, str):
            if not found[0] and _SURROGATE.search(node):
                found[0] = True
        elif isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and not found[0] and _SURROGATE.search(key):
                    found[0] = True
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(value, 1)  # the outermost object or array is depth 1
    return replace_surrogates(value) if found[0] else value


def replace_surrogates(value: Any) -> Any:
    """A copy of a JSON-like value whose strings have no lone surrogates (U+FFFD instead)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_surrogates(v) for v in value]
    return value


def parse_json(text: str | bytes, limits: IngestLimits = DEFAULT_LIMITS) -> Any:
    """``json.loads`` within the depth limit; raises LimitExceeded or ValueError (bad JSON,
    an integer over Python's digit limit)."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise LimitExceeded(limits, "max_depth", "values nested too deeply to parse") from exc
    return bounded_tree(value, limits)


def parse_yaml(text: str, limits: IngestLimits = DEFAULT_LIMITS) -> Any:
    """``yaml.safe_load`` with the depth bounded while composing and the nodes copied by aliases
    counted (a recursive alias refused); raises LimitExceeded, ValueError or yaml.YAMLError."""
    import yaml
    from yaml.events import AliasEvent, ScalarEvent

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.apihelper_depth = 0
            self.apihelper_copied = 0
            self.apihelper_copied_bytes = 0
            self.apihelper_sizes: dict[int, int] = {}
            self.apihelper_bytes: dict[int, int] = {}  # the text each node holds, its children's too

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(AliasEvent):
                anchor = self.peek_event().anchor  # type: ignore[no-untyped-call]
                target = self.anchors.get(anchor)
                if target is not None:
                    size = self.apihelper_sizes.get(id(target))
                    if size is None:
                        raise ValueError(f"YAML alias *{anchor} refers to its own anchor (a recursive value)")
                    self.apihelper_copied += size
                    if self.apihelper_copied > limits.max_yaml_alias_nodes:
                        raise LimitExceeded(
                            limits,
                            "max_yaml_alias_nodes",
                            f"YAML aliases copy more than {limits.max_yaml_alias_nodes} nodes",
                        )
                    # By size too: a few aliases of one big value are copied whole into every
                    # document that quotes them.
                    self.apihelper_copied_bytes += self.apihelper_bytes.get(id(target), 0)
                    if self.apihelper_copied_bytes > limits.max_yaml_alias_bytes:
                        raise LimitExceeded(
                            limits,
                            "max_yaml_alias_bytes",
                            f"YAML aliases copy more than {limits.max_yaml_alias_bytes} bytes of text",
                        )
                return super().compose_node(parent, index)
            collection = not self.check_event(ScalarEvent)
            self.apihelper_depth += collection
            if self.apihelper_depth > limits.max_depth:
                raise LimitExceeded(limits, "max_depth", f"values nested deeper than {limits.max_depth}")
            node = super().compose_node(parent, index)
            self.apihelper_depth -= collection
            children: list[Any]
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                children = []
            self.apihelper_sizes[id(node)] = 1 + sum(self.apihelper_sizes.get(id(c), 1) for c in children)
            own = len(node.value.encode("utf-8", "surrogatepass")) if isinstance(node, yaml.ScalarNode) else 0
            self.apihelper_bytes[id(node)] = own + sum(self.apihelper_bytes.get(id(c), 0) for c in children)
            return node

    loader = BoundedLoader(text)
    try:
        value = loader.get_single_data()
    except RecursionError as exc:
        raise LimitExceeded(limits, "max_depth", "values nested too deeply to parse") from exc
    finally:
        loader.dispose()
    return bounded_tree(value, limits)


def problem_message(exc: BaseException) -> str:
    """The one-line problem text for an exception met while loading a file."""
    if isinstance(exc, (LimitExceeded, FileRefused)):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (invalid byte at offset {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to process"
    if isinstance(exc, MemoryError):
        return "ran out of memory while reading it"
    if type(exc).__module__.startswith("yaml"):
        return "not valid YAML: " + " ".join(str(exc).split())[:300]
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


_P = ParamSpec("_P")


def contained(loader: Callable[_P, LoadResult]) -> Callable[_P, LoadResult]:
    """A loader that never raises: the last resort for what its own per-record handling missed
    (the file becomes one problem line; what was loaded from it is lost)."""

    @wraps(loader)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> LoadResult:
        try:
            return loader(*args, **kwargs)
        except Exception as exc:  # hostile input must stay that file's problem
            path = args[0] if args else kwargs.get("path", "?")
            return LoadResult([], [LoadProblem(str(path), problem_message(exc))])

    return wrapper


__all__ = [
    "FileRefused",
    "bounded_tree",
    "contained",
    "decode_text",
    "inside",
    "parse_json",
    "parse_yaml",
    "problem_message",
    "read_bytes",
    "replace_surrogates",
]
