"""Loader for OpenAPI 3.x specs (JSON or YAML): one ApiDoc per operation.

Key: ``"METHOD /path"`` (method upper-case, path exactly as in the spec). HEAD operations are
kept: they are operations of the spec and eval keys may name them.

- ``text``: a compact, readable record for the prompt: method and path, operationId and tags,
  summary, trimmed description, parameters (in/required/type) and request-body fields.
- ``index_text``: what is embedded and BM25-indexed: action verbs implied by the method, path
  words, operationId words, summary, description (boilerplate "Preconditions" block reduced to
  the privilege it names), tags, and up to 6 path/query parameter names (body fields are not
  indexed: on the dev questions they diluted both dense and BM25 matches).
- ``metadata["function"]``: an openfunctions-style JSON function schema (name, description,
  parameters as a JSON Schema object, required list); metadata also has method, path,
  operation_id, tags and required, and ``servers``: the base URLs the operation is served at
  (the operation's ``servers``, else its path item's, else the spec's; variables filled with
  their defaults), which the verdict compares an answer's host with.

Local ``$ref``s ("#/components/...") are resolved lazily while the schema is compacted, with a
guard against cycles (recursive filter schemas are common) and a depth limit. A broken or
external ``$ref`` becomes a LoadProblem naming the operation; the operation is still loaded with
that part left untyped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apihelper.retriever.doc_kinds import HTTP_METHODS, DocKind, FunctionSchema, RestMetadata, RestParameter
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits, LimitExceeded
from apihelper.retriever.loaders._files import (
    contained,
    decode_text,
    parse_json,
    parse_yaml,
    problem_message,
    read_bytes,
)
from apihelper.retriever.loaders._text import (
    expanded_words,
    first_paragraphs,
    identifier_words,
    join_nonempty,
    split_identifier,
    trim,
    unique,
)
from apihelper.retriever.types import ApiDoc, LoadProblem, LoadResult

# Words a user says for what a method does; they let "create a session" meet "POST /session".
_METHOD_VERBS = {
    "GET": "get list show read fetch",
    "POST": "create add submit post",
    "PUT": "update replace set",
    "PATCH": "update modify change",
    "DELETE": "delete remove destroy",
    "HEAD": "check exists head",
    "OPTIONS": "options",
    "TRACE": "trace",
}

MAX_SCHEMA_DEPTH = 3  # nesting kept in function schemas; deeper levels become bare types
MAX_REF_DEPTH = 8  # chained $refs followed before giving up (cycles are cut earlier)
MAX_PROPERTIES = 40
MAX_ENUM = 20
MAX_DESCRIPTION_TEXT = 700
MAX_FIELD_DESCRIPTION = 160
MAX_TEXT = 4000
# Path/query parameter names indexed per operation. Body fields are left out of index_text (they
# stay in text and the function schema): long field lists drowned the operation's meaning, e.g.
# "Create a new session" lost "POST /session" (19 body fields) in dense and BM25 search alike.
INDEX_PARAM_NAMES = 6
INDEX_DESCRIPTION = 600

_PRECONDITIONS = re.compile(r"\*\*Preconditions:\*\*(?P<body>.*)$", re.DOTALL)
_PRIVILEGE = re.compile(r"(\w+) privilege required", re.IGNORECASE)
_FUNCTION_NAME_BAD = re.compile(r"[^A-Za-z0-9_]+")


class BrokenRefError(Exception):
    pass


class FileBudgetExceeded(LimitExceeded):
    """A budget of the whole file ran out: its remaining operations are skipped."""


class _Resolver:
    """Looks up local JSON-pointer refs in one spec and remembers the broken ones it met.

    It also keeps the budget of the operation being built (:meth:`start_operation`): each
    ``$ref`` followed and each schema node visited counts, and going past
    ``limits.max_ref_expansions`` or ``limits.max_schema_nodes`` raises LimitExceeded, so refs
    that fan out (40 wide, 4 deep is 2.5 million nodes) cost a bounded amount of work. The nodes
    of all the file's operations count against ``limits.max_file_schema_nodes`` too
    (:class:`FileBudgetExceeded`): a thousand operations each just under the per-operation caps
    would otherwise build gigabytes of metadata.
    """

    def __init__(self, spec: Mapping[str, Any], limits: IngestLimits = DEFAULT_LIMITS) -> None:
        self._spec = spec
        self._limits = limits
        self.broken: list[str] = []
        self.expansions = 0
        self.nodes = 0
        self.file_nodes = 0

    def start_operation(self) -> None:
        self.broken.clear()
        self.expansions = 0
        self.nodes = 0

    def count_node(self) -> None:
        self.nodes += 1
        self.file_nodes += 1
        if self.file_nodes > self._limits.max_file_schema_nodes:
            raise FileBudgetExceeded(
                self._limits,
                "max_file_schema_nodes",
                f"the file's schemas have more than {self._limits.max_file_schema_nodes} nodes; the rest skipped",
            )
        if self.nodes > self._limits.max_schema_nodes:
            raise LimitExceeded(
                self._limits, "max_schema_nodes", f"its schemas have more than {self._limits.max_schema_nodes} nodes"
            )

    def lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise BrokenRefError(f"external $ref {ref!r} is not supported (only '#/...' refs)")
        node: Any = self._spec
        for raw in ref[1:].split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BrokenRefError(f"broken $ref {ref!r}: {part!r} not found")
        return node

    def deref(self, node: Any, stack: tuple[str, ...] = ()) -> tuple[Any, tuple[str, ...]]:
        """Follow ``$ref`` chains of ``node``; returns the target and the refs followed.

        A cycle or a broken ref yields ``{}`` (no type information); broken ones are recorded.
        Sibling keys of a ``$ref`` (allowed in 3.1, e.g. a description) override the target's.
        """
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in stack or len(stack) >= MAX_REF_DEPTH:
                name = ref.rsplit("/", 1)[-1]
                return {"type": "object", "description": f"(recursive {name})"}, stack
            self.expansions += 1
            if self.expansions > self._limits.max_ref_expansions:
                raise LimitExceeded(
                    self._limits,
                    "max_ref_expansions",
                    f"its schemas expand more than {self._limits.max_ref_expansions} $refs",
                )
            try:
                target = self.lookup(ref)
            except BrokenRefError as exc:
                self.broken.append(str(exc))
                return {k: v for k, v in node.items() if k != "$ref"}, stack
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if siblings and isinstance(target, Mapping):
                target = {**target, **siblings}
            node = target
            stack = (*stack, ref)
        return node, stack


def _json_default(value: Any) -> str:
    return str(value)


def _jsonable(value: Any) -> Any:
    """YAML may give dates and other objects; round-trip through JSON so metadata stays plain."""
    return json.loads(json.dumps(value, default=_json_default))


def compact_schema(resolver: _Resolver, node: Any, depth: int = 0, stack: tuple[str, ...] = ()) -> dict[str, Any]:
    """A small JSON Schema for prompts: refs inlined, allOf merged, nulls dropped, depth-limited."""
    resolver.count_node()
    node, stack = resolver.deref(node, stack)
    if not isinstance(node, Mapping):
        return {}
    out: dict[str, Any] = {}

    if "allOf" in node and isinstance(node["allOf"], list):
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        props: dict[str, Any] = dict(merged.get("properties") or {})
        required: list[str] = list(merged.get("required") or [])
        for part in node["allOf"]:
            part_node, _ = resolver.deref(part, stack)
            if not isinstance(part_node, Mapping):
                continue
            props.update(part_node.get("properties") or {})
            required.extend(part_node.get("required") or [])
            for key in ("type", "description", "title", "enum", "items"):
                if key in part_node and key not in merged:
                    merged[key] = part_node[key]
        if props:
            merged["properties"] = props
            merged.setdefault("type", "object")
        if required:
            merged["required"] = unique(required)
        node = merged

    for combinator in ("anyOf", "oneOf"):
        variants = node.get(combinator)
        if isinstance(variants, list):
            kept = [v for v in variants if not _is_null_schema(resolver, v, stack)]
            if len(kept) == 1:
                inner = compact_schema(resolver, kept[0], depth, stack)
                if "description" in node and isinstance(node["description"], str):
                    inner["description"] = trim(node["description"], MAX_FIELD_DESCRIPTION)
                if "default" in node:
                    inner["default"] = _jsonable(node["default"])
                return inner
            if kept:
                out["anyOf"] = [compact_schema(resolver, v, depth + 1, stack) for v in kept[:4]]

    schema_type = node.get("type")
    if isinstance(schema_type, list):
        non_null = [t for t in schema_type if t != "null"]
        schema_type = non_null[0] if non_null else None
    if isinstance(schema_type, str):
        out["type"] = schema_type
    elif "properties" in node:
        out["type"] = "object"
    if isinstance(node.get("description"), str) and node["description"].strip():
        out["description"] = trim(" ".join(node["description"].split()), MAX_FIELD_DESCRIPTION)
    if isinstance(node.get("format"), str):
        out["format"] = node["format"]
    if isinstance(node.get("enum"), list):
        out["enum"] = _jsonable(node["enum"][:MAX_ENUM])
    if "default" in node:
        out["default"] = _jsonable(node["default"])

    if depth >= MAX_SCHEMA_DEPTH:
        if "title" in node and out.get("type") == "object" and "description" not in out:
            out["description"] = str(node["title"])
        return out
    if "items" in node:
        out["items"] = compact_schema(resolver, node["items"], depth + 1, stack)
    properties = node.get("properties")
    if isinstance(properties, Mapping) and properties:
        out["properties"] = {
            str(name): compact_schema(resolver, sub, depth + 1, stack)
            for name, sub in list(properties.items())[:MAX_PROPERTIES]
        }
        required = [r for r in node.get("required") or [] if r in out["properties"]]
        if required:
            out["required"] = required
    return out


def _is_null_schema(resolver: _Resolver, node: Any, stack: tuple[str, ...]) -> bool:
    target, _ = resolver.deref(node, stack)
    return isinstance(target, Mapping) and target.get("type") == "null"


def type_label(schema: Mapping[str, Any]) -> str:
    """A short human type for ``text``: 'string', 'array of integer', 'string (uuid)', ..."""
    if "anyOf" in schema:
        return " | ".join(type_label(v) for v in schema["anyOf"]) or "any"
    kind = str(schema.get("type", "any"))
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        label = f"array of {type_label(schema['items'])}"
    else:
        label = kind
    if "format" in schema:
        label += f" ({schema['format']})"
    if "enum" in schema:
        label += ", one of: " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "default" in schema:
        label += f"; default {json.dumps(schema['default'])}"
    return label


def _field_line(name: str, where: str | None, required: bool, schema: Mapping[str, Any]) -> str:
    tags = [t for t in (where, "required" if required else None) if t]
    head = f"- {name}" + (f" ({', '.join(tags)})" if tags else "")
    line = f"{head}: {type_label(schema)}"
    nested = schema.get("properties")
    if isinstance(nested, Mapping) and nested:
        inner_required = set(schema.get("required") or [])
        names = [f"{n} (required)" if n in inner_required else str(n) for n in nested]
        line += " with fields " + ", ".join(names)
    if schema.get("description"):
        line += f" — {schema['description']}"
    return line


def _function_name(operation_id: str | None, method: str, path: str) -> str:
    raw = operation_id or f"{method.lower()}_{path}"
    name = _FUNCTION_NAME_BAD.sub("_", raw).strip("_") or method.lower()
    if name[0].isdigit():
        name = f"op_{name}"
    return name


def action_phrase(method: str, api_path: str) -> tuple[str, list[str]]:
    """A short verb phrase for an operation, and the method verbs worth indexing with it.

    ``POST /sessions`` creates ("create sessions"), but ``POST /sessions/{id}/restart`` or
    ``POST /config/get`` is an action named by its last segment ("restart sessions id"): calling
    every POST "create" made action endpoints outrank the real create operation.
    """
    segments = [s for s in api_path.split("/") if s and s != "_"]
    literals = [s for s in segments if not s.startswith("{")]
    verbs = _METHOD_VERBS.get(method, method.lower()).split()
    last = segments[-1] if segments else ""
    is_action = method in ("POST", "PUT", "PATCH") and bool(last) and not last.startswith("{") and len(literals) >= 2
    if is_action:
        rest = " ".join(split_identifier("/".join(segments[:-1])))
        return f"{' '.join(split_identifier(last))} {rest}".strip(), []
    return f"{verbs[0]} {' '.join(split_identifier(api_path))}".strip(), verbs


def _split_description(description: str) -> tuple[str, list[str]]:
    """The description without its trailing "**Preconditions:**" block, and privileges named there."""
    match = _PRECONDITIONS.search(description)
    if not match:
        return description, []
    privileges = [p.lower() for p in _PRIVILEGE.findall(match.group("body"))]
    return description[: match.start()], privileges


def read_spec(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> Any:
    """The parsed JSON (``.json``) or YAML (otherwise) document at ``path``, read and parsed
    within ``limits``; raises (LimitExceeded, FileRefused, OSError, ValueError, YAMLError)."""
    raw = decode_text(read_bytes(path, limits))
    if path.suffix.lower() == ".json":
        return parse_json(raw, limits)
    return parse_yaml(raw, limits)


@contained
def load_openapi(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadResult:
    """Load one OpenAPI 3.x file; never raises (problems are returned)."""
    source = str(path)
    try:
        spec = read_spec(path, limits)
    except Exception as exc:  # unreadable, too big, too deep, bad JSON/YAML: all this file's problem
        return LoadResult([], [LoadProblem(source, problem_message(exc))])
    if not isinstance(spec, Mapping) or not str(spec.get("openapi", "")).startswith("3"):
        return LoadResult([], [LoadProblem(source, "not an OpenAPI 3.x document ('openapi: 3.x' missing)")])
    paths = spec.get("paths")
    if not isinstance(paths, Mapping):
        return LoadResult([], [LoadProblem(source, "OpenAPI document has no 'paths' object")])

    resolver = _Resolver(spec, limits)
    spec_servers = _server_urls(spec.get("servers"))
    docs: list[ApiDoc] = []
    problems: list[LoadProblem] = []
    for api_path, raw_item in paths.items():
        resolver.start_operation()
        try:
            item, _ = resolver.deref(raw_item)
        except FileBudgetExceeded as exc:
            problems.append(LoadProblem(f"{source}#{api_path}", f"stopped: {exc}"))
            return LoadResult(docs, problems)
        except LimitExceeded as exc:
            problems.append(LoadProblem(f"{source}#{api_path}", f"skipped: {exc}"))
            continue
        if not isinstance(item, Mapping):
            problems.append(LoadProblem(f"{source}#{api_path}", "path item is not an object"))
            continue
        shared_params = item.get("parameters") or []
        item_servers = _server_urls(item.get("servers")) or spec_servers
        for method in HTTP_METHODS:
            operation = item.get(method.lower())
            if operation is None:
                continue
            key = f"{method} {api_path}"
            resolver.start_operation()
            if not isinstance(operation, Mapping):
                problems.append(LoadProblem(f"{source}#{key}", "operation is not an object"))
                continue
            if len(docs) >= limits.max_docs:
                problems.append(
                    LoadProblem(source, str(LimitExceeded(limits, "max_docs", "more operations; the rest skipped")))
                )
                return LoadResult(docs, problems)
            try:
                servers = _server_urls(operation.get("servers")) or item_servers
                docs.append(_operation_doc(resolver, method, str(api_path), operation, shared_params, servers))
            except FileBudgetExceeded as exc:
                problems.append(LoadProblem(f"{source}#{key}", f"stopped: {exc}"))
                return LoadResult(docs, problems)
            except Exception as exc:  # a malformed operation must not stop the rest of the spec
                problems.append(LoadProblem(f"{source}#{key}", f"skipped: {problem_message(exc)}"))
            for message in unique(resolver.broken):
                problems.append(LoadProblem(f"{source}#{key}", message))
    return LoadResult(docs, problems)


MAX_SERVERS = 8  # base URLs kept per operation
MAX_SERVER_URL = 512


def _server_urls(raw: Any) -> list[str]:
    """The URLs of an OpenAPI ``servers`` list, ``{variables}`` filled with their defaults."""
    if not isinstance(raw, list):
        return []
    urls: list[str] = []
    for server in raw[:MAX_SERVERS]:
        if not isinstance(server, Mapping) or not isinstance(server.get("url"), str):
            continue
        url = server["url"].strip()[:MAX_SERVER_URL]
        variables = server.get("variables")
        if isinstance(variables, Mapping):
            for name, variable in list(variables.items())[:16]:
                default = variable.get("default") if isinstance(variable, Mapping) else None
                if isinstance(default, str):
                    url = url.replace("{" + str(name) + "}", default)
        if url and url not in urls:
            urls.append(url)
    return urls


def _operation_doc(
    resolver: _Resolver,
    method: str,
    api_path: str,
    operation: Mapping[str, Any],
    shared_params: Any,
    servers: list[str] | None = None,
) -> ApiDoc:
    key = f"{method} {api_path}"
    operation_id = operation.get("operationId")
    operation_id = str(operation_id) if operation_id else None
    summary = " ".join(str(operation.get("summary") or "").split())
    description = str(operation.get("description") or "")
    tags = [str(t) for t in operation.get("tags") or []]

    # Parameters: path-level ones first, overridden by operation-level ones with the same (name, in).
    params: dict[tuple[str, str], tuple[bool, dict[str, Any], str]] = {}
    for raw_param in [*(shared_params or []), *(operation.get("parameters") or [])]:
        param, stack = resolver.deref(raw_param)
        if not isinstance(param, Mapping) or "name" not in param:
            continue
        where = str(param.get("in", "query"))
        if where == "cookie":
            continue
        schema = compact_schema(resolver, param.get("schema") or {}, 1, stack)
        if param.get("description"):
            schema["description"] = trim(" ".join(str(param["description"]).split()), MAX_FIELD_DESCRIPTION)
        param_required = bool(param.get("required")) or where == "path"
        params[(str(param["name"]), where)] = (param_required, schema, where)

    body_schema: dict[str, Any] = {}
    body_required = False
    body_media = ""
    raw_body = operation.get("requestBody")
    if raw_body is not None:
        body, stack = resolver.deref(raw_body)
        if isinstance(body, Mapping):
            body_required = bool(body.get("required"))
            content = body.get("content") or {}
            if isinstance(content, Mapping) and content:
                body_media = "application/json" if "application/json" in content else str(next(iter(content)))
                media = content[body_media]
                if isinstance(media, Mapping):
                    body_schema = compact_schema(resolver, media.get("schema") or {}, 0, stack)

    # JSON function schema (openfunctions): parameters first, then top-level body fields.
    properties: dict[str, Any] = {}
    required: list[str] = []
    for (name, _where), (is_required, schema, _w) in params.items():
        if name in properties:
            continue
        properties[name] = schema
        if is_required:
            required.append(name)
    body_fields = body_schema.get("properties") if body_schema.get("type") == "object" else None
    if isinstance(body_fields, dict) and body_fields:
        body_required_fields = set(body_schema.get("required") or [])
        for name, schema in body_fields.items():
            field_name = name if name not in properties else f"body_{name}"
            properties[field_name] = schema
            if name in body_required_fields:
                required.append(field_name)
    elif body_schema:
        properties["body"] = body_schema
        if body_required:
            required.append("body")

    plain_description, privileges = _split_description(description)
    short_description = first_paragraphs(plain_description, MAX_FIELD_DESCRIPTION * 2)
    function = FunctionSchema(
        name=_function_name(operation_id, method, api_path),
        description=summary or short_description or key,
        parameters={"type": "object", "properties": properties, "required": required},
    )

    # text: what the model reads.
    param_lines = [_field_line(name, where, req, schema) for (name, _), (req, schema, where) in params.items()]
    body_lines: list[str] = []
    if isinstance(body_fields, dict) and body_fields:
        body_required_fields = set(body_schema.get("required") or [])
        body_lines = [
            _field_line(name, None, name in body_required_fields, schema) for name, schema in body_fields.items()
        ]
    elif body_schema:
        body_lines = [_field_line("body", None, body_required, body_schema)]
    header = f"{method} {api_path}"
    described = " ".join(description.split())
    text = join_nonempty(
        [
            header,
            f"operationId: {operation_id}" + (f" (tags: {', '.join(tags)})" if tags else "")
            if operation_id
            else (f"tags: {', '.join(tags)}" if tags else None),
            f"summary: {summary}" if summary else None,
            f"description: {trim(described, MAX_DESCRIPTION_TEXT)}" if described else None,
            "parameters:\n" + "\n".join(param_lines) if param_lines else None,
            f"request body ({body_media}{', required' if body_required else ''}):\n" + "\n".join(body_lines)
            if body_lines
            else None,
        ]
    )
    text = trim(text, MAX_TEXT)

    # index_text: what search sees.
    privilege_words = " ".join(f"{p} privilege" for p in unique(privileges) if p != "user")
    param_names = [name for name, _ in params][:INDEX_PARAM_NAMES]
    phrase, verbs = action_phrase(method, api_path)
    index_text = join_nonempty(
        [
            expanded_words(phrase),  # a plain phrase first: "create add new session", "restart ..."
            f"{method} {' '.join(verbs)} {' '.join(split_identifier(api_path))}",
            expanded_words(identifier_words(operation_id)) if operation_id else None,
            summary,
            first_paragraphs(plain_description, INDEX_DESCRIPTION) if plain_description.strip() else None,
            privilege_words,
            ("tags: " + identifier_words(*tags)) if tags else None,
            ("parameters: " + identifier_words(*param_names)) if param_names else None,
        ],
        sep="\n",
    )

    located: list[RestParameter] = [
        {"name": name, "in": where, "required": req} for (name, where), (req, _, _) in params.items()
    ]
    metadata = RestMetadata(
        kind=DocKind.REST_OPERATION.value,
        method=method,
        path=api_path,
        operation_id=operation_id,
        summary=summary,
        tags=tags,
        parameters=located,
        required=required,
        function=function,
    )
    if servers:
        metadata["servers"] = servers
    title = summary or operation_id or key
    return ApiDoc(key=key, title=title, text=text, index_text=index_text, metadata=metadata)
