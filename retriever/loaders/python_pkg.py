"""Loader for Python packages (wheel, sdist .tar.gz/.tgz/.tar, .zip, or a source directory).

Every ``.py`` file is parsed with :mod:`ast`; nothing is ever imported or executed.

Docs produced (keys are dotted qualified names; the module path comes from the file's path in the
package, ``__init__.py`` standing for the package itself):

- ``pkg.module.function``: each public module-level function (``def`` or ``async def``);
- ``pkg.module.Class.method``: each public method of a public class (also nested classes, as
  ``Class.Inner.method``), classmethods and staticmethods included; properties are skipped
  (they are attributes, not calls) and so are ``@overload`` stubs;
- ``pkg.module.Class``: one doc per public class (kind "class"): its constructor signature
  (from ``__init__``, without ``self``), its docstring and the names of its public methods.
  ``__init__`` is folded into this doc instead of getting its own.

"Public" means: no leading underscore anywhere in the module path or name, and when the module
defines a literal ``__all__``, module-level names must be listed there. Test packages
(``tests``/``test`` directories, ``test_*.py``, ``conftest.py``) and ``setup.py`` are skipped.

Command-line code is loaded but told apart, so that a whole SDK wheel ranks its library first
(``retriever.ranking``) and a user can tell a command from a function: a function decorated by a
command-line framework (``@click.command()``, ``@click.option(...)``, ``@<group>.command()``,
typer's ``@app.command()``) is kind ``cli_command``; every doc has ``metadata["audience"]``:
``cli`` for those commands and for anything in a command-line package (a module path segment
``cli``, ``commands``, ``console``, ``scripts``, ``cmd``), else ``api``.

Each doc's metadata has ``kind`` (function/method/classmethod/staticmethod/class/cli_command), ``module``,
``qualname``, ``signature`` (rebuilt from the AST, annotations via ``ast.unparse``),
``decorators``, ``is_async``, ``required`` and ``function``: an openfunctions JSON function schema
whose ``name`` is the callable as written in code (``Class.method`` or ``function``), with
parameter types mapped roughly from annotations, ``self``/``cls``/``*args``/``**kwargs`` left out
and ``required`` = parameters without a default.

A file that the running Python's ``ast`` rejects is a LoadProblem naming the file. Newer syntax
is common in current packages (the Backend.AI 26.x client uses PEP 695 type parameters, which
Python 3.11 cannot parse), so the loader then retries with PEP 695 type-parameter lists and
``type X = ...`` statements rewritten away; when that works the file's docs are loaded and the
problem says so (signatures then lack the type parameters). Anything else is skipped.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import io
import json
import re
import sys
import tokenize
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from apihelper.retriever.doc_kinds import DocKind, FunctionSchema, PythonMetadata
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits, LimitExceeded
from apihelper.retriever.links import call_metadata, http_calls
from apihelper.retriever.loaders._archives import TAR_SUFFIXES, package_files, package_names
from apihelper.retriever.loaders._files import contained, problem_message
from apihelper.retriever.loaders._text import expanded_words, first_paragraphs, identifier_words, join_nonempty, trim
from apihelper.retriever.types import ApiDoc, LoadProblem, LoadResult

MAX_DOCSTRING_TEXT = 1500
MAX_DOCSTRING_INDEX = 600
MAX_TEXT = 4000
MAX_PARAM_DESCRIPTION = 200
INDEX_PARAM_NAMES = 40  # measured on the dev questions: parameter names help here (unlike REST body fields)

_SKIP_DIRS = {"tests", "test", "testing", "__pycache__", "node_modules", "build", "dist", "site-packages"}
_SKIP_FILES = {"setup", "conftest", "noxfile", "fabfile"}
_PROPERTY_DECORATORS = {"property", "cached_property", "setter", "getter", "deleter"}

_SIMPLE_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "bytes": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "Decimal": {"type": "number"},
    "complex": {"type": "number"},
    "bool": {"type": "boolean"},
    "UUID": {"type": "string", "format": "uuid"},
    "Path": {"type": "string"},
    "PurePath": {"type": "string"},
    "PathLike": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "timedelta": {"type": "number"},
}
_ARRAY_TYPES = {
    "list",
    "List",
    "Sequence",
    "MutableSequence",
    "Iterable",
    "Iterator",
    "Collection",
    "tuple",
    "Tuple",
    "set",
    "Set",
    "frozenset",
    "FrozenSet",
    "AbstractSet",
    "MutableSet",
    "AsyncIterator",
    "AsyncIterable",
    "Generator",
}
_OBJECT_TYPES = {"dict", "Dict", "Mapping", "MutableMapping", "TypedDict", "OrderedDict", "defaultdict"}
_NONE_NAMES = {"None", "NoneType", "Undefined", "UndefinedType"}
_UNWRAP_TYPES = {"Optional", "Annotated", "Final", "Required", "NotRequired", "ClassVar"}


def _module_parts(relpath: str, strip_root: str | None, dir_package: str | None) -> list[str] | None:
    """Dotted module path of a file inside the package, or None when it is not importable."""
    parts = relpath.split("/")
    if strip_root is not None and parts and parts[0] == strip_root:
        parts = parts[1:]
    # Wheels keep purelib/platlib files under <name>.data/<scheme>/; sdists often use src/.
    if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
        parts = parts[2:]
    if parts and parts[0] == "src":
        parts = parts[1:]
    if not parts or any(p.endswith((".dist-info", ".egg-info", ".data")) for p in parts[:-1]):
        return None
    stem = parts[-1][:-3]
    parts = parts[:-1] if stem == "__init__" else [*parts[:-1], stem]
    if dir_package:
        parts = [dir_package, *parts]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return parts


def _is_public_module(parts: Sequence[str]) -> bool:
    if any(p.startswith("_") for p in parts):
        return False
    if any(p in _SKIP_DIRS for p in parts[:-1]):
        return False
    last = parts[-1]
    return not (last in _SKIP_FILES or last.startswith("test_") or last.endswith("_test") or last in _SKIP_DIRS)


def _matches(module: str, include: Sequence[str] | None) -> bool:
    if not include:
        return True
    return any(
        fnmatch.fnmatchcase(module, pattern) or module.startswith(pattern.rstrip(".*") + ".")
        if not any(c in pattern for c in "*?[")
        else fnmatch.fnmatchcase(module, pattern)
        for pattern in include
    )


# --------------------------------------------------------------------------------------------
# Parsing (with a PEP 695 fallback for interpreters older than 3.12)


def strip_pep695(source: str) -> str | None:
    """``source`` with PEP 695 syntax rewritten to what Python 3.11 parses, or None if none found.

    ``def f[T](...)`` and ``class C[T]:`` lose their type-parameter list; ``type X[T] = ...``
    becomes ``X = ...``. Works on tokens, so strings and comments are never touched.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    significant = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    # The matching "]" of every "[", in one pass (a scan per "[" was quadratic: 12,000 nested
    # "def a[" took 73 s).
    closing: dict[int, int] = {}
    open_brackets: list[int] = []
    for j, tok in enumerate(significant):
        if tok.type == tokenize.OP and tok.string == "[":
            open_brackets.append(j)
        elif tok.type == tokenize.OP and tok.string == "]" and open_brackets:
            closing[open_brackets.pop()] = j
    edits: list[tuple[tuple[int, int], tuple[int, int]]] = []

    line_starters = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for i, tok in enumerate(significant[:-2]):
        nxt, after = significant[i + 1], significant[i + 2]
        if tok.type != tokenize.NAME or nxt.type != tokenize.NAME:
            continue
        if tok.string in ("def", "class") and after.type == tokenize.OP and after.string == "[":
            end = closing.get(i + 2)
            if end is not None:
                edits.append((after.start, significant[end].end))
        elif tok.string == "type" and after.type == tokenize.OP and after.string in ("[", "="):
            prev = significant[i - 1] if i > 0 else None
            at_line_start = (
                prev is None or prev.type in line_starters or (prev.type == tokenize.OP and prev.string == ";")
            )
            if not at_line_start:
                continue
            edits.append((tok.start, nxt.start))
            if after.string == "[":
                end = closing.get(i + 2)
                if end is not None:
                    edits.append((after.start, significant[end].end))
    if not edits:
        return None
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def absolute(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    # Cut the edited spans in one pass; a span inside an earlier one is already gone.
    pieces: list[str] = []
    done = 0
    for start, end in sorted((absolute(a), absolute(b)) for a, b in edits):
        if start < done:
            continue
        pieces.append(source[done:start])
        done = end
    pieces.append(source[done:])
    return "".join(pieces)


def _parse(data: bytes, label: str, problems: list[LoadProblem]) -> ast.Module | None:
    if b"\x00" in data:
        problems.append(LoadProblem(label, "skipped: a binary file, not Python source"))
        return None
    try:
        return ast.parse(data, filename=label)
    except (SyntaxError, ValueError) as exc:
        where = f"line {exc.lineno}: " if isinstance(exc, SyntaxError) and exc.lineno else ""
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        text = data.decode("utf-8", errors="replace")
        rewritten = strip_pep695(text)
        if rewritten is not None:
            try:
                tree = ast.parse(rewritten, filename=label)
            except SyntaxError:
                pass
            else:
                problems.append(
                    LoadProblem(
                        label,
                        f"Python {version} cannot parse this file ({where}{reason}); loaded after "
                        "removing PEP 695 type parameters (signatures lack them)",
                    )
                )
                return tree
        problems.append(LoadProblem(label, f"Python {version} cannot parse this file ({where}{reason}); skipped"))
        return None


# --------------------------------------------------------------------------------------------
# Annotations -> JSON Schema


def _dotted_tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _dotted_name(node: ast.expr) -> str | None:
    """``a.b.C`` for a name or an attribute chain; None for anything else (a call, a subscript)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted_name(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_union_members(node.left), *_union_members(node.right)]
    return [node]


def _is_noneish(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    return _dotted_tail(node) in _NONE_NAMES


def annotation_schema(node: ast.expr | None, depth: int = 0) -> dict[str, Any]:
    """A rough JSON Schema for an annotation; ``{}`` when nothing useful can be said."""
    if node is None or depth > 4:
        return {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return annotation_schema(ast.parse(node.value, mode="eval").body, depth + 1)
        except SyntaxError:
            return {}
    members = _union_members(node)
    if len(members) > 1:
        kept = [m for m in members if not _is_noneish(m)]
        schemas = [s for s in (annotation_schema(m, depth + 1) for m in kept) if s]
        if not schemas:
            return {}
        if len(schemas) == 1 or all(s == schemas[0] for s in schemas):
            return schemas[0]
        return {"anyOf": schemas[:4]}
    if isinstance(node, ast.Subscript):
        base = _dotted_tail(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in _UNWRAP_TYPES:
            return annotation_schema(args[0], depth + 1) if args else {}
        if base == "Union":
            union = args[0]
            for arg in args[1:]:
                union = ast.BinOp(left=union, op=ast.BitOr(), right=arg)
            return annotation_schema(union, depth + 1)
        if base == "Literal":
            values = [a.value for a in args if isinstance(a, ast.Constant)]
            schema: dict[str, Any] = {"enum": values}
            kinds = {type(v) for v in values}
            if kinds == {str}:
                schema["type"] = "string"
            elif kinds == {int}:
                schema["type"] = "integer"
            return schema
        if base in _ARRAY_TYPES:
            items = annotation_schema(args[0], depth + 1) if args and base not in ("tuple", "Tuple") else {}
            return {"type": "array", "items": items} if items else {"type": "array"}
        if base in _OBJECT_TYPES:
            return {"type": "object"}
        return annotation_schema(node.value, depth + 1)
    name = _dotted_tail(node)
    if name is None:
        return {}
    if name in _SIMPLE_TYPES:
        return dict(_SIMPLE_TYPES[name])
    if name in _ARRAY_TYPES:
        return {"type": "array"}
    if name in _OBJECT_TYPES:
        return {"type": "object"}
    if name in ("Any", "object") or name in _NONE_NAMES:
        return {}
    # An unknown class (often an enum or a model): say which, leave the JSON type open.
    return {"description": f"a {name}"}


# --------------------------------------------------------------------------------------------
# Docstrings


_REST_PARAM = re.compile(r"^\s*:param\s+(?:[\w\[\], .|]+\s+)?\*{0,2}(\w+)\s*:\s*(.*)$")
_REST_FIELD = re.compile(r"^\s*:\w")
_GOOGLE_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments)\s*:\s*$")
_GOOGLE_PARAM = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def param_docs(docstring: str) -> dict[str, str]:
    """Parameter descriptions from reST (``:param x: ...``) or Google (``Args:``) docstrings."""
    result: dict[str, str] = {}
    lines = docstring.splitlines()
    current: str | None = None
    for line in lines:
        match = _REST_PARAM.match(line)
        if match:
            current = match.group(1)
            result[current] = match.group(2).strip()
        elif current and line.strip() and not _REST_FIELD.match(line):
            result[current] += " " + line.strip()
        else:
            current = None
    if result:
        return {k: trim(v, MAX_PARAM_DESCRIPTION) for k, v in result.items()}
    in_section = False
    section_indent = 0
    param_indent = 0
    current = None
    for line in lines:
        if _GOOGLE_SECTION.match(line):
            in_section, current = True, None
            section_indent = len(line) - len(line.lstrip())
            continue
        if not in_section:
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section_indent:
            in_section = False
            continue
        match = _GOOGLE_PARAM.match(line)
        if match and (current is None or indent <= param_indent):
            current = match.group(1)
            param_indent = indent
            result[current] = match.group(2).strip()
        elif current:
            result[current] += " " + line.strip()
    return {k: trim(v, MAX_PARAM_DESCRIPTION) for k, v in result.items()}


# --------------------------------------------------------------------------------------------
# Signatures


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence (up to 200 characters), or ''."""
    text = first_paragraphs(docstring, 400) if docstring else ""
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return trim(match.group(1) if match else text, 200)


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[str]:
    return [ast.unparse(d) for d in node.decorator_list]


def _decorator_tails(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    tails: set[str] = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        tail = _dotted_tail(target)
        if tail:
            tails.add(tail)
    return tails


def _format_arg(arg: ast.arg, default: ast.expr | None) -> str:
    text = arg.arg
    if arg.annotation is not None:
        text += f": {ast.unparse(arg.annotation)}"
        if default is not None:
            text += f" = {ast.unparse(default)}"
    elif default is not None:
        text += f"={ast.unparse(default)}"
    return text


def format_arguments(args: ast.arguments, skip_first: bool = False) -> str:
    """The parameter list as written (``a, b: int = 1, *, c``), optionally without self/cls."""
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts: list[str] = []
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=False)):
        if skip_first and index == 0:
            continue
        parts.append(_format_arg(arg, default))
        if args.posonlyargs and index == len(args.posonlyargs) - 1:
            parts.append("/")
    if args.vararg is not None:
        parts.append("*" + _format_arg(args.vararg, None))
    elif args.kwonlyargs:
        parts.append("*")
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=False):
        parts.append(_format_arg(arg, kw_default))
    if args.kwarg is not None:
        parts.append("**" + _format_arg(args.kwarg, None))
    return ", ".join(parts)


def _literal_default(node: ast.expr) -> tuple[bool, Any]:
    try:
        value = ast.literal_eval(node)
        json.dumps(value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return False, None
    return True, value


def parameters_schema(
    args: ast.arguments, skip_first: bool, docs: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """JSON Schema ``properties`` and ``required`` for a signature (no self/cls/*args/**kwargs)."""
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs: list[tuple[ast.arg, ast.expr | None]] = list(zip(positional, defaults, strict=False))
    if skip_first:
        pairs = pairs[1:]
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=False))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for arg, default in pairs:
        schema = annotation_schema(arg.annotation)
        described = docs.get(arg.arg)
        if described:
            schema["description"] = (
                described if "description" not in schema else f"{described} ({schema['description']})"
            )
        if default is None:
            required.append(arg.arg)
        else:
            ok, value = _literal_default(default)
            if ok and value is not None:
                schema["default"] = value
            elif not ok:
                note = f"default: {trim(ast.unparse(default), 60)}"
                schema["description"] = f"{schema['description']}; {note}" if "description" in schema else note
        properties[arg.arg] = schema
    return properties, required


# --------------------------------------------------------------------------------------------
# Docs


def _dunder_all(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and value is not None:
            try:
                names = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
                return set(names)
            return None
    return None


def _top_level(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Module statements, looking inside top-level if/try blocks (TYPE_CHECKING, fallbacks)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level(node.body)
            for handler in node.handlers:
                yield from _top_level(handler.body)
            yield from _top_level(node.orelse)
        else:
            yield node


_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _function_doc(
    module: str,
    node: _FunctionNode,
    owner: list[str],
    owner_summary: str,
) -> ApiDoc:
    tails = _decorator_tails(node)
    if is_cli_command(node):
        kind = DocKind.CLI_COMMAND
    elif not owner:
        kind = DocKind.FUNCTION
    elif "staticmethod" in tails:
        kind = DocKind.STATICMETHOD
    elif "classmethod" in tails:
        kind = DocKind.CLASSMETHOD
    else:
        kind = DocKind.METHOD
    skip_first = kind in (DocKind.METHOD, DocKind.CLASSMETHOD)
    is_async = isinstance(node, ast.AsyncFunctionDef)
    qualname = ".".join([*owner, node.name])
    key = f"{module}.{qualname}"
    decorators = _decorator_names(node)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    signature = f"{'async ' if is_async else ''}def {node.name}({format_arguments(node.args)}){returns}"
    docstring = ast.get_docstring(node) or ""
    properties, required = parameters_schema(node.args, skip_first, param_docs(docstring))
    summary = first_paragraphs(docstring, 300) if docstring else ""
    function = FunctionSchema(
        name=qualname,
        description=summary or f"{kind.value} {qualname} of {module}",
        parameters={"type": "object", "properties": properties, "required": required},
    )
    text = join_nonempty(
        [
            key,
            f"{kind.value} of class {'.'.join(owner)}" + (f": {owner_summary}" if owner_summary else "")
            if owner
            else f"function in module {module}",
            ("decorators: " + " ".join(f"@{d}" for d in decorators)) if decorators else None,
            f"signature: {signature}",
            trim(docstring, MAX_DOCSTRING_TEXT) if docstring else None,
        ]
    )
    index_text = join_nonempty(
        [
            expanded_words(identifier_words(module.rsplit(".", 1)[-1], *owner, node.name)),
            first_paragraphs(docstring, MAX_DOCSTRING_INDEX) if docstring else None,
            owner_summary or None,
            ("parameters: " + identifier_words(*list(properties)[:INDEX_PARAM_NAMES]))
            if properties and INDEX_PARAM_NAMES
            else None,
        ],
        sep="\n",
    )
    metadata = PythonMetadata(
        kind=kind.value,
        module=module,
        qualname=qualname,
        summary=first_sentence(docstring),
        signature=signature,
        decorators=decorators,
        is_async=is_async,
        required=required,
        function=function,
    )
    calls = http_calls(node)
    if calls:
        metadata["http_calls"] = call_metadata(calls)
    title = f"{qualname}: {trim(summary, 120)}" if summary else qualname
    # Views (one vector each): the name with its signature, and the name with its docstring.
    name_words = expanded_words(identifier_words(module.rsplit(".", 1)[-1], *owner, node.name))
    views = [join_nonempty([name_words, signature])]
    if docstring:
        views.append(join_nonempty([name_words, first_paragraphs(docstring, MAX_DOCSTRING_INDEX)]))
    return ApiDoc(
        key=key,
        title=title,
        text=trim(text, MAX_TEXT),
        index_text=index_text,
        metadata=metadata,
        views=tuple(views),
    )


@dataclasses.dataclass(frozen=True)
class _Constructor:
    """What a class is called with: its parameter list as written (no self) and its schema."""

    arguments: str
    properties: Mapping[str, Any]
    required: tuple[str, ...]


_DATACLASS_DECORATORS = frozenset({"dataclass", "define", "frozen", "mutable", "attrs", "s"})
_NO_INIT_FIELD = frozenset({"ClassVar"})
_FIELD_CLASS_BASES = frozenset({"NamedTuple", "TypedDict", "BaseModel"})


def _constructor(node: ast.ClassDef, init: _FunctionNode | None, docstring: str) -> _Constructor | None:
    """The class's own constructor: its ``__init__``, or the fields of a dataclass (stdlib,
    pydantic or attrs decorator) read as ``__init__`` would be generated; None when the class
    defines neither (the constructor is inherited: see :func:`_inherit_constructors`)."""
    if init is not None:
        init_doc = ast.get_docstring(init) or ""
        properties, required = parameters_schema(init.args, True, param_docs(init_doc or docstring))
        return _Constructor(format_arguments(init.args, skip_first=True), properties, tuple(required))
    decorators = [d for d in node.decorator_list if _decorator_tail(d) in _DATACLASS_DECORATORS]
    base_tails = {(_dotted_tail(b) or "") for b in node.bases}
    if decorators:
        args = _dataclass_arguments(node, decorators[0], kw_only=False)
    elif base_tails & _FIELD_CLASS_BASES:
        # NamedTuple fields are positional; a TypedDict or pydantic model takes keywords.
        args = _dataclass_arguments(node, None, kw_only=not base_tails & {"NamedTuple"})
    else:
        return None
    properties, required = parameters_schema(args, True, param_docs(docstring))
    return _Constructor(format_arguments(args, skip_first=True), properties, tuple(required))


def _decorator_tail(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return (_dotted_tail(target) or "").rsplit(".", 1)[-1]


def _dataclass_arguments(node: ast.ClassDef, decorator: ast.expr | None, *, kw_only: bool) -> ast.arguments:
    """The generated ``__init__``'s parameters: annotated fields in order (not ``ClassVar``, not
    ``field(init=False)``), ``field(default=...)`` and ``default_factory`` as defaults;
    ``kw_only`` (or the decorator's ``kw_only=True``) makes every field keyword-only."""
    kw_only = kw_only or (
        isinstance(decorator, ast.Call)
        and any(
            k.arg == "kw_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in decorator.keywords
        )
    )
    fields: list[tuple[ast.arg, ast.expr | None]] = []
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        annotation = stmt.annotation
        head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
        if (_dotted_tail(head) or "").rsplit(".", 1)[-1] in _NO_INIT_FIELD:
            continue
        default: ast.expr | None = stmt.value
        if isinstance(default, ast.Call) and (_dotted_tail(default.func) or "").rsplit(".", 1)[-1] in (
            "field",
            "Field",
            "ib",
        ):
            keywords = {k.arg: k.value for k in default.keywords if k.arg}
            init_flag = keywords.get("init")
            if isinstance(init_flag, ast.Constant) and init_flag.value is False:
                continue
            if "default" in keywords:
                default = keywords["default"]
            elif "default_factory" in keywords or "factory" in keywords:
                factory = keywords.get("default_factory", keywords.get("factory"))
                default = ast.Call(func=factory, args=[], keywords=[]) if factory is not None else None
            else:
                default = default.args[0] if default.args else None
        fields.append((ast.arg(arg=stmt.target.id, annotation=annotation), default))
    # A field without a default after one with a default: only valid keyword-only.
    if not kw_only and any(d is None for i, (_, d) in enumerate(fields) if any(e is not None for _, e in fields[:i])):
        kw_only = True
    self_arg = ast.arg(arg="self")
    if kw_only:
        return ast.arguments(
            posonlyargs=[],
            args=[self_arg],
            kwonlyargs=[a for a, _ in fields],
            kw_defaults=[d for _, d in fields],
            defaults=[],
        )
    defaults = [d for _, d in fields if d is not None]
    return ast.arguments(
        posonlyargs=[], args=[self_arg, *(a for a, _ in fields)], kwonlyargs=[], kw_defaults=[], defaults=defaults
    )


@dataclasses.dataclass(frozen=True)
class _ClassInfo:
    """A top-level class of a module (public or not), for constructor inheritance."""

    constructor: _Constructor | None
    bases: tuple[str, ...]  # qualified names, as the module's imports resolve them


def class_infos(module: str, tree: ast.Module) -> dict[str, _ClassInfo]:
    """Every top-level class of ``module`` by qualified name: its own constructor (if any) and
    its bases resolved through the module's imports (``from .registry import Collector``)."""
    imported: dict[str, str] = {}
    for stmt in _top_level(tree.body):
        if isinstance(stmt, ast.ImportFrom):
            base = stmt.module or ""
            if stmt.level:
                parts = module.split(".")
                anchor = parts[: max(len(parts) - stmt.level, 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in stmt.names:
                imported[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                # "import a.b as c" binds c to a.b; "import a.b" binds a.
                imported[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    infos: dict[str, _ClassInfo] = {}
    local = {n.name for n in _top_level(tree.body) if isinstance(n, ast.ClassDef)}
    for node in _top_level(tree.body):
        if not isinstance(node, ast.ClassDef):
            continue
        init = next(
            (
                c
                for c in _top_level(node.body)
                if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef)) and c.name == "__init__"
            ),
            None,
        )
        bases: list[str] = []
        for b in node.bases:
            dotted = _dotted_name(b)
            if not dotted:
                continue
            head, _, rest = dotted.partition(".")
            if head in local and not rest:
                bases.append(f"{module}.{head}")
            elif head in imported:
                bases.append(imported[head] + (f".{rest}" if rest else ""))
            else:
                bases.append(dotted)
        infos[f"{module}.{node.name}"] = _ClassInfo(
            _constructor(node, init, ast.get_docstring(node) or ""), tuple(bases)
        )
    return infos


MAX_BASE_DEPTH = 16  # bases followed when looking for an inherited constructor


def _inherited(name: str, classes: Mapping[str, _ClassInfo], depth: int = 0) -> tuple[str, _Constructor] | None:
    """The first constructor among ``name``'s bases, depth-first and left to right (the MRO of
    single inheritance chains, which is what a constructor comes from in practice)."""
    info = classes.get(name)
    if info is None or depth > MAX_BASE_DEPTH:
        return None
    for base in info.bases:
        found = classes.get(base)
        if found is None:
            # "pkg.mod.Base" re-exported by "pkg" (from .mod import Base): find it by its name.
            tail = base.rsplit(".", 1)[-1]
            same = [k for k in classes if k.rsplit(".", 1)[-1] == tail and k.split(".")[0] == base.split(".")[0]]
            if len(same) != 1:
                continue
            base, found = same[0], classes[same[0]]
        if found.constructor is not None:
            return base, found.constructor
        deeper = _inherited(base, classes, depth + 1)
        if deeper is not None:
            return deeper
    return None


def _inherit_constructors(docs: dict[str, ApiDoc], classes: Mapping[str, _ClassInfo]) -> None:
    """Give each class doc without a constructor of its own the one it inherits, as read from
    its bases' source: ``class Counter(MetricWrapperBase)`` is called like ``MetricWrapperBase``."""
    for key, info in classes.items():
        doc = docs.get(key)
        if doc is None or info.constructor is not None or not info.bases:
            continue
        found = _inherited(key, classes)
        if found is None:
            continue
        base, ctor = found
        name = key.rsplit(".", 1)[-1]
        old = f"class {name}()"
        signature = f"class {name}({ctor.arguments})"
        metadata = PythonMetadata(**doc.metadata)  # type: ignore[typeddict-item]
        metadata["signature"] = signature
        metadata["required"] = list(ctor.required)
        metadata["constructor_from"] = base
        function = metadata.get("function")
        if function is not None:
            metadata["function"] = FunctionSchema(
                name=function["name"],
                description=function["description"],
                parameters={"type": "object", "properties": dict(ctor.properties), "required": list(ctor.required)},
            )
        text = doc.text.replace(f"constructor: {old}", f"constructor: {signature} (inherited from {base})", 1)
        docs[key] = dataclasses.replace(doc, text=trim(text, MAX_TEXT), metadata=metadata)


def _class_docs(module: str, node: ast.ClassDef, owner: list[str]) -> list[ApiDoc]:
    path = [*owner, node.name]
    docstring = ast.get_docstring(node) or ""
    summary = trim(first_paragraphs(docstring, 200).split(". ")[0], 200) if docstring else ""
    methods: dict[str, _FunctionNode] = {}
    nested: list[ast.ClassDef] = []
    init: _FunctionNode | None = None
    for child in _top_level(node.body):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            tails = _decorator_tails(child)
            if "overload" in tails or tails & _PROPERTY_DECORATORS:
                continue
            if child.name == "__init__":
                init = child
            elif not child.name.startswith("_"):
                methods.pop(child.name, None)  # a redefinition wins, and moves to the end
                methods[child.name] = child
        elif isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
            nested.append(child)

    docs: list[ApiDoc] = []
    qualname = ".".join(path)
    key = f"{module}.{qualname}"
    bases = [ast.unparse(b) for b in node.bases]
    ctor = _constructor(node, init, docstring)
    signature = f"class {node.name}({ctor.arguments if ctor is not None else ''})"
    properties, required = (dict(ctor.properties), list(ctor.required)) if ctor is not None else ({}, [])
    decorators = _decorator_names(node)
    text = join_nonempty(
        [
            key,
            f"class in module {module}" + (f", bases: {', '.join(bases)}" if bases else ""),
            ("decorators: " + " ".join(f"@{d}" for d in decorators)) if decorators else None,
            f"constructor: {signature}",
            trim(docstring, MAX_DOCSTRING_TEXT) if docstring else None,
            ("methods: " + ", ".join(methods)) if methods else None,
        ]
    )
    index_text = join_nonempty(
        [
            expanded_words(identifier_words(module.rsplit(".", 1)[-1], *path)) + " class",
            first_paragraphs(docstring, MAX_DOCSTRING_INDEX) if docstring else None,
        ],
        sep="\n",
    )
    docs.append(
        ApiDoc(
            key=key,
            title=f"{qualname}: {summary}" if summary else qualname,
            text=trim(text, MAX_TEXT),
            index_text=index_text,
            metadata=PythonMetadata(
                kind=DocKind.CLASS.value,
                module=module,
                qualname=qualname,
                summary=first_sentence(docstring),
                signature=signature,
                decorators=decorators,
                bases=bases,
                methods=list(methods),
                is_async=False,
                required=required,
                function=FunctionSchema(
                    name=qualname,
                    description=summary or f"class {qualname} of {module}",
                    parameters={"type": "object", "properties": properties, "required": required},
                ),
            ),
        )
    )
    for method in methods.values():
        docs.append(_function_doc(module, method, path, summary))
    for inner in nested:
        docs.extend(_class_docs(module, inner, path))
    return docs


# Decorator roots of command-line frameworks, and package names that hold a command-line interface.
CLI_FRAMEWORKS = frozenset({"click", "typer", "cyclopts", "fire", "cloup", "asyncclick"})
CLI_DECORATOR_TAILS = frozenset({"command", "group", "callback"})
CLI_SEGMENTS = frozenset({"cli", "clis", "commands", "console", "scripts", "cmd"})


def _decorator_root(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    while isinstance(target, ast.Attribute):
        target = target.value
    return target.id if isinstance(target, ast.Name) else ""


def is_cli_command(node: _FunctionNode) -> bool:
    """Whether a function is a command of a command-line framework: decorated from click/typer
    (``@click.option``, ``@click.command()``) or with ``@<group>.command(...)``/``.group(...)``."""
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if _decorator_root(dec) in CLI_FRAMEWORKS:
            return True
        if isinstance(target, ast.Attribute) and target.attr in CLI_DECORATOR_TAILS:
            return True
    return False


def audience(module: str, kind: str) -> str:
    """Who a doc is for: ``cli`` for command-line commands and anything in a command-line
    package (a module path segment such as ``cli`` or ``commands``), else ``api``."""
    if kind == DocKind.CLI_COMMAND.value or any(part in CLI_SEGMENTS for part in module.split(".")):
        return "cli"
    return "api"


def _with_audience(doc: ApiDoc) -> ApiDoc:
    metadata = dict(doc.metadata)
    metadata["audience"] = audience(str(metadata.get("module", "")), str(metadata.get("kind", "")))
    return dataclasses.replace(doc, metadata=metadata)


def module_docs(module: str, tree: ast.Module) -> list[ApiDoc]:
    """The docs of one parsed module (public functions, classes and their methods), each with
    ``metadata["audience"]`` (see :func:`audience`)."""
    exported = _dunder_all(tree)
    by_name: dict[str, list[ApiDoc]] = {}
    for node in _top_level(tree.body):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_") or (exported is not None and node.name not in exported):
            continue
        if isinstance(node, ast.ClassDef):
            by_name[node.name] = _class_docs(module, node, [])
        else:
            if "overload" in _decorator_tails(node):
                continue
            by_name[node.name] = [_function_doc(module, node, [], "")]
    return [_with_audience(doc) for docs in by_name.values() for doc in docs]


@contained
def load_python_package(
    path: Path, include: Sequence[str] | None = None, limits: IngestLimits = DEFAULT_LIMITS
) -> LoadResult:
    """Load a wheel, sdist, zip or directory of Python sources (never imports them).

    ``include``: optional module-name patterns (fnmatch, e.g. ``ai.backend.client.func.*``; a
    plain dotted name also takes its submodules) restricting which modules give docs.
    ``limits``: member count, bytes per member and in total, docs (see ``IngestLimits``); a
    directory's files are read only when they are regular files inside it (a symlink out of it,
    a FIFO or a device is a problem). Files are read one at a time and not kept.
    """
    problems: list[LoadProblem] = []
    try:
        names = package_names(path, limits, problems, _SKIP_DIRS)
    except Exception as exc:  # too many members, not an archive, unreadable
        problems.append(LoadProblem(str(path), f"cannot read package: {problem_message(exc)}"))
        return LoadResult([], problems)
    if not names:
        if not problems:
            problems.append(LoadProblem(str(path), "no .py files found"))
        return LoadResult([], problems)

    # An sdist (or a zip of a project) has one top directory named like "pkg-1.0": drop it.
    first_parts = {n.split("/", 1)[0] for n in names if "/" in n}
    strip_root: str | None = None
    if path.is_file() and len(first_parts) == 1 and all("/" in n for n in names):
        root = next(iter(first_parts))
        if not root.isidentifier() or path.name.lower().endswith(TAR_SUFFIXES):
            strip_root = root
    # A directory that is itself a package (has __init__.py) names the top-level module.
    dir_package = path.name if path.is_dir() and (path / "__init__.py").is_file() else None

    modules: dict[str, str] = {}
    for relpath in names:
        parts = _module_parts(relpath, strip_root, dir_package)
        if parts is None or not _is_public_module(parts):
            continue
        module = ".".join(parts)
        if _matches(module, include):
            modules.setdefault(relpath, module)

    docs: dict[str, ApiDoc] = {}
    classes: dict[str, _ClassInfo] = {}
    total = 0
    try:
        for relpath, read in package_files(path, list(modules), limits):
            label = f"{path}!{relpath}" if path.is_file() else str(path / relpath)
            if len(docs) >= limits.max_docs:
                problems.append(
                    LoadProblem(str(path), str(LimitExceeded(limits, "max_docs", "more docs; the rest skipped")))
                )
                break
            try:
                data = read()
                total += len(data)
                if total > limits.max_total_bytes:
                    problems.append(
                        LoadProblem(
                            str(path),
                            str(LimitExceeded(limits, "max_total_bytes", f"sources past {label}; the rest skipped")),
                        )
                    )
                    break
                tree = _parse(data, label, problems)
                del data
                found = module_docs(modules[relpath], tree) if tree is not None else []
                if tree is not None:
                    classes.update(class_infos(modules[relpath], tree))
            except Exception as exc:  # pathological files must not stop the load
                problems.append(LoadProblem(label, f"skipped: {problem_message(exc)}"))
                continue
            for doc in found:
                if doc.key in docs:
                    problems.append(LoadProblem(label, f"duplicate key {doc.key!r}; kept the first"))
                    continue
                docs[doc.key] = doc
    except Exception as exc:  # the archive itself broke half-way (a truncated stream, a bad header)
        problems.append(LoadProblem(str(path), f"cannot read package archive: {problem_message(exc)}"))
    _inherit_constructors(docs, classes)
    return LoadResult(list(docs.values()), problems)


__all__ = ["annotation_schema", "load_python_package", "module_docs", "param_docs", "strip_pep695"]
