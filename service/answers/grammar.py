"""Grammars under which a model can only call APIs that exist: allowed calls in, EBNF text out.

Pure functions of typed inputs (no I/O, no xgrammar import): ``allowed_calls`` maps API docs to
:class:`AllowedCall`\\ s, and :func:`build_call_grammar` gives back a :class:`CallGrammar` whose
``ebnf`` an engine hands to its guided decoding (xgrammar's ``GrammarCompiler.compile_grammar`` in
the transformers engine, ``GuidedDecodingParams(grammar=...)`` in TensorRT-LLM). It is the twin of
``apihelper.service.answers.parse``: what the grammar lets a model write, the parser reads and the
verdict (``check``) resolves to the same doc.

What each format's grammar allows (free text where the format has free text, the call constrained):

- ``gorilla_v0``: ``[<<<domain>>>: text]<<<api_call>>>: CALL[ <<<api_provider>>>: text ...]`` where
  CALL is one allowed call: a Python call ``pkg.mod.func(arg=value, ...)``, a REST call
  (``POST /sessions {"name": ...}`` or ``requests.post('https://api.example/sessions', json={...})``
  on one of the API's own servers, ``'{BASE_URL}/sessions'`` when none is known),
  or an APIBench record's ``api_call`` verbatim. After the call only the other Gorilla sections
  follow (``<<<api_call>>>`` cannot appear twice).
- ``openfunctions_v2``: one or more ``<<function>>name(arg=value, ...)`` and nothing else.
- ``chat_tools``: free text, then ``<tool_call>[{"name": "<one of>", "arguments": {...}}]</tool_call>``
  one or more times (newline-separated), then the end.

Names are exact; argument *names* come from the schema, in schema order (required ones first and
mandatory, optional ones omittable), each at most once; values are loosely typed literals
(strings, numbers, booleans, None/null, flat lists and dicts, enum members where the schema has an
enum). String values are written without escapes (a quote of the other kind is fine inside: the
repetition of a plain character class keeps the token mask fast, see ``_at_most``). Free text
and string values are bounded by :class:`GrammarOptions`, so a constrained
answer always reaches and finishes its call within a known number of characters.

Safety: every piece of doc text (names, paths, enum values, api_calls) enters the grammar only
inside an EBNF string literal written by :func:`ebnf_string`, which escapes everything outside
printable ASCII; rule names are generated here, never taken from docs. Doc text that contains an
answer marker (``<<<``, ``<<function>>``, ``<tool_call>``) or cannot be written in the format is
left out, with the reason in ``CallGrammar.dropped``; string values never contain ``<``, so no
generated value can start a marker either.

Portability: the EBNF uses only what xgrammar 0.1.25 (TensorRT-LLM 1.2.x's pin) parses: rules,
string literals, character classes, grouping, ``|``, ``?``, ``*`` and ``{m,n}`` repetition.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import keyword
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from apihelper.service.answers.formats import (
    BASE_URL_PLACEHOLDER,
    FUNCTION_MARK,
    GORILLA_CALL_FIELD,
    GORILLA_PROSE_FIELD,
    GORILLA_TAIL_FIELDS,
    MARKERS,
    REQUESTS_BODY_KEYWORD,
    REQUESTS_MODULE,
    REQUESTS_QUERY_KEYWORD,
    REST_METHODS,
    REST_TEXT_PATH_END,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    gorilla_marker,
)
from apihelper.service.answers.grounding import echoes_name
from apihelper.service.prompts import PromptFormat

JsonScalar = str | int | float | bool


class CallKind(str, enum.Enum):
    PYTHON = "python"  # name: a dotted callable ("pkg.mod.Class.method")
    REST = "rest"  # name: "METHOD /path/{template}"
    APIBENCH = "apibench"  # name: the record's api_call, written verbatim
    FUNCTION = "function"  # name: a function-schema name (openfunctions_v2, chat_tools)


class ValueType(str, enum.Enum):
    """A parameter's JSON-schema type, as far as the grammar constrains it."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ARRAY = "array"
    OBJECT = "object"
    ANY = "any"


class ParamWhere(str, enum.Enum):
    KEYWORD = "keyword"  # Python / function keyword argument (JSON key in chat_tools)
    POSITIONAL = "positional"  # Python positional-only parameter: written without its name
    PATH = "path"  # REST path template parameter
    QUERY = "query"  # REST query parameter
    BODY = "body"  # REST JSON body field
    HEADER = "header"  # REST header: never written in a call, so never in the grammar


class RestStyle(str, enum.Enum):
    TEXT = "text"  # POST /sessions {"name": "x"}
    REQUESTS = "requests"  # requests.post('https://host/sessions', json={'name': 'x'})


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``types``: the JSON types its value may have (a union for ``anyOf`` /
    ``type: [...]`` schemas); ``(ANY,)`` when the schema does not say."""

    name: str
    types: tuple[ValueType, ...] = (ValueType.ANY,)
    required: bool = False
    where: ParamWhere = ParamWhere.KEYWORD
    enum: tuple[JsonScalar, ...] = ()  # allowed values; empty: any value of ``types``
    # An object's own properties (written in order, required ones mandatory), and an array's item.
    fields: tuple[ParamSpec, ...] = ()
    items: ParamSpec | None = None
    # Strings the schema itself offers (examples, a default): grounded values in any case.
    offered: tuple[str, ...] = ()
    extra: ParamSpec | None = None  # a map's values (an object with additionalProperties only)
    # A form the schema states for a string (``grounding.stated_form``: a date, a time): grounded
    # spans of that form, when the question has some, are the only spans offered.
    form: str = ""

    def __post_init__(self) -> None:
        if not self.types:
            raise ValueError(f"parameter {self.name!r}: types must not be empty (use (ValueType.ANY,))")

    @property
    def any_type(self) -> bool:
        return ValueType.ANY in self.types


@dataclass(frozen=True)
class AllowedCall:
    """One API the model may call. ``aliases``: other spellings of ``name`` that resolve to the
    same API (``Class.method`` for ``pkg.mod.Class.method``); Python kinds only."""

    name: str
    kind: CallKind
    params: tuple[ParamSpec, ...] = ()
    aliases: tuple[str, ...] = ()
    base_urls: tuple[str, ...] = ()  # REST: the absolute server URLs its spec names


@dataclass(frozen=True)
class GrammarOptions:
    max_prose_chars: int = 160  # free text before the call (domain line, chat preamble)
    max_string_chars: int = 128  # one string value
    max_items: int = 8  # entries of a list or dict value
    max_calls: int = 4  # calls per answer (openfunctions_v2, chat_tools)
    rest_styles: tuple[RestStyle, ...] = (RestStyle.TEXT, RestStyle.REQUESTS)
    max_path_value_chars: int = 64  # one concrete REST path segment / query value
    # Where REST calls go when their spec names no server (the api_base_urls setting); with
    # neither, a requests-style call writes '{BASE_URL}/path': never a host of the model's own.
    base_urls: tuple[str, ...] = ()
    # Grounded strings: when not None, a string value (outside an enum) is one of these spans of
    # the question, a string its schema offers, or the placeholder "<name>"; never free text.
    grounded: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if min(self.max_prose_chars, self.max_string_chars, self.max_path_value_chars) < 0:
            raise ValueError("GrammarOptions: character bounds must be >= 0")
        if self.max_items < 1 or self.max_calls < 1 or not self.rest_styles:
            raise ValueError("GrammarOptions: max_items and max_calls must be >= 1, rest_styles non-empty")


@dataclass(frozen=True)
class CallGrammar:
    format: PromptFormat
    ebnf: str  # root rule "root"
    calls: tuple[AllowedCall, ...]  # the calls the grammar allows
    dropped: tuple[tuple[str, str], ...] = ()  # (call name, why it was left out)
    key: str = field(default="", compare=False)  # digest of the grammar: a compile-cache key


class NoAllowedCallsError(ValueError):
    """None of the given calls can be written in the format: nothing to constrain to."""

    def __init__(self, fmt: PromptFormat, dropped: Sequence[tuple[str, str]]) -> None:
        detail = "; ".join(f"{n}: {r}" for n, r in dropped[:5]) or "no calls given"
        super().__init__(f"no call can be constrained to in {fmt.value} ({detail})")
        self.dropped = tuple(dropped)


MAX_LITERAL_CHARS = 4096  # one doc-derived literal (a name, a path, an api_call)
_IDENTIFIER_RE = re.compile(r"[^\W\d]\w*")
_TEMPLATE_PARAM_RE = re.compile(r"\{([^{}/]+)\}")
_TEXT_PATH_UNSAFE = re.compile(f"[{REST_TEXT_PATH_END}]")
# Separators as EBNF literals.
_COMMA = '", "'
_AMP = '"&"'


# ---------------------------------------------------------------------------------------------
# EBNF literals


def ebnf_string(text: str) -> str:
    """``text`` as an xgrammar EBNF string literal matching exactly ``text``.

    Printable ASCII stays as it is (``"`` and ``\\`` escaped); every other code point is a
    ``\\uXXXX`` / ``\\UXXXXXXXX`` escape, so no doc text can end the literal or inject syntax.
    Raises ValueError for lone surrogates (no tokenizer can emit them).
    """
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF:
            raise ValueError("text contains a lone surrogate")
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= cp < 0x7F:
            out.append(ch)
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def python_string_literal(text: str) -> str:
    """The Python source of a single-quoted string literal holding ``text`` (``repr``-like, but
    always single-quoted, and with non-ASCII kept as characters)."""
    body = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    body = "".join(ch if ord(ch) >= 0x20 or ch in "\\" else f"\\x{ord(ch):02x}" for ch in body)
    return f"'{body}'"


def _python_literal(value: JsonScalar) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return python_string_literal(value)
    return repr(value)


def _json_literal(value: JsonScalar) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Rule building


class _Rules:
    """Named EBNF rules; names are generated (``prefix`` + counter), never taken from docs."""

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}
        self._counter = 0

    def add(self, name: str, body: str) -> str:
        if name in self._lines:
            raise ValueError(f"rule {name} defined twice")
        self._lines[name] = body
        return name

    def fresh(self, prefix: str, body: str) -> str:
        self._counter += 1
        return self.add(f"{prefix}_{self._counter}", body)

    def has(self, name: str) -> bool:
        return name in self._lines

    def text(self) -> str:
        root = self._lines.get("root")
        if root is None:
            raise ValueError("grammar has no root rule")
        ordered = [("root", root), *((n, b) for n, b in self._lines.items() if n != "root")]
        return "\n".join(f"{n} ::= {b}" for n, b in ordered) + "\n"


@dataclass(frozen=True)
class _Item:
    expr: str
    required: bool


def _ordered(rules: _Rules, items: Sequence[_Item], sep: str) -> str:
    """An expression for ``items`` in order, optional ones omittable, ``sep`` (an EBNF literal)
    between the ones written. Linear in ``len(items)``: first_k / rest_k rules."""
    if not items:
        return '""'
    if all(i.required for i in items):
        return " ".join([items[0].expr] + [f"{sep} {i.expr}" for i in items[1:]])
    first = rest = _EMPTY
    for index in reversed(range(len(items))):
        item = items[index]
        body = _seq(item.expr, rest)
        first = rules.fresh("first", body if item.required else f"({body}) | {first}")
        if index:  # rest_0 would never be used
            written = _seq(sep, item.expr, rest)
            rest = rules.fresh("rest", written if item.required else f"({written}) | {rest}")
    return first


_EMPTY = '""'


def _at_most(rules: _Rules, prefix: str, item: str, count: int, sep: str = _COMMA) -> str:
    r"""An expression for 0..``count`` ``item``\ s separated by ``sep``, as nested optional rules.

    Not ``(sep item){0,n}``: xgrammar's repetition range over a group costs ~100 ms per token
    mask at a 49k vocabulary (a range over a character class is fast and is used for strings)."""
    if count <= 0:
        return _EMPTY
    tail = _EMPTY
    for _ in range(count - 1):
        tail = rules.fresh(prefix, f'({_seq(sep, item, tail)}) | ""')
    return rules.fresh(prefix, f'({_seq(item, tail)}) | ""')


def _seq(*exprs: str) -> str:
    """EBNF concatenation of ``exprs``, leaving out empty ones."""
    return " ".join(e for e in exprs if e != _EMPTY) or _EMPTY


@dataclass(frozen=True)
class _Syntax:
    """How values are written: Python literals or JSON. ``tag`` names the syntax's rules."""

    tag: str
    literal: Callable[[JsonScalar], str]
    string: Callable[[int], str]  # the string rule for strings of at most n characters
    booleans: str
    null: str


_PYTHON = _Syntax(
    "py",
    _python_literal,
    lambda n: f'("\'" [^\'\\\\<\\r\\n]{{0,{n}}} "\'") | ("\\"" [^"\\\\<\\r\\n]{{0,{n}}} "\\"")',
    '"True" | "False"',
    '"None"',
)
_JSON = _Syntax(
    "j",
    _json_literal,
    lambda n: f'"\\"" [^"\\\\<\\x00-\\x1f]{{0,{n}}} "\\""',
    '"true" | "false"',
    '"null"',
)


class _Values:
    """Shared value rules, defined on first use: the scalars both syntaxes write alike, and each
    syntax's strings, booleans, lists, maps and objects (rules named ``v_<tag>...``)."""

    def __init__(self, rules: _Rules, options: GrammarOptions) -> None:
        self.rules = rules
        self.o = options

    def _once(self, name: str, body: str) -> str:
        if not self.rules.has(name):
            self.rules.add(name, body)
        return name

    # --- scalars shared by both syntaxes
    def integer(self) -> str:
        return self._once("v_int", '"-"? ("0" | [1-9] [0-9]{0,17})')

    def number(self) -> str:
        return self._once("v_num", f'{self.integer()} ("." [0-9]{{1,16}})? ([eE] [+\\-]? [0-9]{{1,3}})?')

    # --- in a syntax
    def string(self, syn: _Syntax) -> str:
        return self._once(f"v_{syn.tag}str", syn.string(self.o.max_string_chars))

    def boolean(self, syn: _Syntax) -> str:
        return self._once(f"v_{syn.tag}bool", syn.booleans)

    def scalar(self, syn: _Syntax) -> str:
        body = f"{self.string(syn)} | {self.number()} | {self.boolean(syn)} | {syn.null}"
        return self._once(f"v_{syn.tag}scalar", body)

    def list(self, syn: _Syntax) -> str:
        name = f"v_{syn.tag}list"
        if self.rules.has(name):
            return name
        items = _at_most(self.rules, f"v_{syn.tag}items", self.scalar(syn), self.o.max_items)
        return self._once(name, f'"[" {items} "]"')

    def mapping(self, syn: _Syntax) -> str:
        """An object of any string keys and scalar values."""
        name = f"v_{syn.tag}map"
        if self.rules.has(name):
            return name
        key, value = self.string(syn), self.scalar(syn)
        entries = _at_most(self.rules, f"v_{syn.tag}entries", f'{key} ": " {value}', self.o.max_items)
        return self._once(name, f'"{{" {entries} "}}"')

    def fields(self, syn: _Syntax, specs: Iterable[ParamSpec], depth: int = 0) -> str:
        """An object of ``specs`` by name (required ones first, optional ones omittable), each
        value by its own schema."""
        items = [
            _Item(f"{ebnf_string(syn.literal(s.name) + ': ')} ({self.value(syn, s, depth)})", s.required)
            for s in _required_first(specs)
        ]
        return f'"{{" {_ordered(self.rules, items, _COMMA)} "}}"'

    def _grounded(self, spec: ParamSpec, literal: Callable[[JsonScalar], str]) -> str:
        """The strings ``spec`` may take when values must be grounded: spans of the question,
        what its schema offers, and its placeholder."""
        grounded = [g for g in self.o.grounded or () if not echoes_name(g, spec.name)]
        if spec.form:
            grounded = [g for g in grounded if re.fullmatch(spec.form, g)] or grounded
        choices = dict.fromkeys([*grounded, *spec.offered, f"<{spec.name}>"])
        usable = [c for c in choices if c and _writable_string(c, self.o.max_string_chars)]
        return "(" + " | ".join(ebnf_string(literal(c)) for c in usable) + ")"

    def _nested(self, syn: _Syntax, spec: ParamSpec, depth: int) -> dict[ValueType, Callable[[], str]]:
        """The forms ``spec``'s own schema gives (fields, items, values of a map; grounded
        strings), which replace the loose ones of its types."""
        out: dict[ValueType, Callable[[], str]] = {}
        if spec.fields and depth < MAX_NESTING:
            out[ValueType.OBJECT] = lambda: self.fields(syn, spec.fields, depth + 1)
        if spec.items is not None and depth < MAX_NESTING:
            item = self.value(syn, dataclasses.replace(spec.items, required=True), depth + 1)
            arr = f"v_{syn.tag}arr"
            out[ValueType.ARRAY] = lambda: f'"[" {_at_most(self.rules, arr, f"({item})", self.o.max_items)} "]"'
        if spec.extra is not None and depth < MAX_NESTING:
            value = self.value(syn, dataclasses.replace(spec.extra, required=True), depth + 1)
            entry = f'{self.string(syn)} ": " ({value})'
            by_key = f"v_{syn.tag}bykey"
            out[ValueType.OBJECT] = lambda: f'"{{" {_at_most(self.rules, by_key, entry, self.o.max_items)} "}}"'
        if self.o.grounded is not None:
            out[ValueType.STRING] = lambda: self._grounded(spec, syn.literal)
        return out

    def value(self, syn: _Syntax, spec: ParamSpec, depth: int = 0) -> str:
        """The values ``spec`` may take in ``syn`` (its enum, else its types; null unless required)."""
        literals = [syn.literal(v) for v in _usable_enum(spec)]
        if literals:
            expr = " | ".join(ebnf_string(lit) for lit in literals)
        else:
            by_type: dict[ValueType, Callable[[], str]] = {
                ValueType.STRING: lambda: self.string(syn),
                ValueType.INTEGER: self.integer,
                ValueType.NUMBER: self.number,
                ValueType.BOOLEAN: lambda: self.boolean(syn),
                ValueType.ARRAY: lambda: self.list(syn),
                ValueType.OBJECT: lambda: self.mapping(syn),
                ValueType.ANY: lambda: self._once(
                    f"v_{syn.tag}any", f"{self.scalar(syn)} | {self.list(syn)} | {self.mapping(syn)}"
                ),
                **self._nested(syn, spec, depth),
            }
            expr = " | ".join(by_type[t]() for t in _union(spec))
        return expr if spec.required else f"{expr} | {syn.null}"

    # --- URL pieces (REST path segments and query values: no quoting needed, parse-safe)
    def url_value(self, spec: ParamSpec) -> str | None:
        """A value written into a URL, or None when the type has no URL form (arrays, objects:
        the validator reads a URL value as a string, coercing only numbers and booleans)."""
        n = self.o.max_path_value_chars
        safe = [v for v in _usable_enum(spec) if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.~-]+", v)]
        if safe:
            return "(" + " | ".join(ebnf_string(v) for v in safe) + ")"
        types = set(_union(spec))
        if spec.any_type or ValueType.STRING in types:
            return self._once("v_urlstr", f"[A-Za-z0-9_.~\\-]{{1,{n}}}")
        forms: list[str] = []
        if types & {ValueType.INTEGER, ValueType.NUMBER}:
            forms.append(self._once("v_urlint", "[0-9]{1,18}"))
        if ValueType.BOOLEAN in types:
            forms.append(self._once("v_urlbool", '"true" | "false"'))
        return " | ".join(forms) or None


MAX_NESTING = 3  # object/array levels written by their own schema; deeper ones loosely typed


def _writable_string(text: str, max_chars: int) -> bool:
    """A grounded string the grammar can offer: bounded, printable, no line break, and no "<"
    except a whole placeholder ("<name>", which no format's marker is)."""
    if len(text) > max_chars or any(c in "\r\n\\" or ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        return False
    if "<" in text or ">" in text:
        return bool(re.fullmatch(r"<[A-Za-z_][\w.-]*>", text)) and text not in _MARKER_TEXTS
    return True


_MARKER_TEXTS = frozenset(m for markers in MARKERS.values() for m in markers)


def _union(spec: ParamSpec) -> tuple[ValueType, ...]:
    """The types to allow: ANY alone when present, and NUMBER subsumes INTEGER."""
    if spec.any_type:
        return (ValueType.ANY,)
    types = tuple(dict.fromkeys(spec.types))
    return tuple(t for t in types if not (t is ValueType.INTEGER and ValueType.NUMBER in types))


def _usable_enum(spec: ParamSpec) -> list[JsonScalar]:
    out: list[JsonScalar] = []
    for v in spec.enum:
        if isinstance(v, str) and ("<" in v or any(0xD800 <= ord(c) <= 0xDFFF for c in v)):
            continue  # string values never hold "<" (markers) or lone surrogates
        if isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and v != v):
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# One call in each syntax


class _Unwritable(ValueError):
    """This call cannot be written in the format; the message says why."""


def _check_text(fmt: PromptFormat, text: str, what: str) -> None:
    if not text:
        raise _Unwritable(f"empty {what}")
    if len(text) > MAX_LITERAL_CHARS:
        raise _Unwritable(f"{what} longer than {MAX_LITERAL_CHARS} characters")
    for marker in MARKERS[fmt]:
        if marker in text:
            raise _Unwritable(f"{what} contains the answer marker {marker!r}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise _Unwritable(f"{what} contains a lone surrogate")


def _python_name(name: str) -> bool:
    """A name Python syntax can write: an identifier that is not a keyword (``or(...)`` and
    ``class=1`` do not parse, so the parser could not read them back)."""
    return bool(_IDENTIFIER_RE.fullmatch(name)) and not keyword.iskeyword(name)


def _dotted_identifier(name: str) -> bool:
    return all(_python_name(part) for part in name.split("."))


def _python_call(fmt: PromptFormat, call: AllowedCall, values: _Values, rules: _Rules) -> str:
    """``name(positional..., keyword=value, ...)`` in Python syntax (gorilla_v0, openfunctions_v2)."""
    names = [call.name, *call.aliases] if call.kind is CallKind.PYTHON else [call.name]
    usable: list[str] = []
    for name in names:
        _check_text(fmt, name, "name")
        if _dotted_identifier(name):
            usable.append(name)
    if not usable:
        raise _Unwritable("name is not a dotted Python identifier")
    items: list[_Item] = []
    keyword: list[_Item] = []
    for spec in call.params:
        if spec.where is ParamWhere.HEADER:
            continue
        value = values.value(_PYTHON, spec)
        if spec.where is ParamWhere.POSITIONAL:
            if keyword:
                raise _Unwritable(f"positional-only parameter {spec.name!r} after keyword parameters")
            items.append(_Item(f"({value})", spec.required))
            continue
        if not (spec.name.isidentifier() and _python_name(spec.name)):
            if spec.required:
                raise _Unwritable(f"required parameter {spec.name!r} is not a Python identifier")
            continue
        keyword.append(_Item(f"{ebnf_string(spec.name + '=')} ({value})", spec.required))
    # Positional-only parameters: a later one can only be written when the earlier ones are.
    if any(not a.required and b.required for a, b in itertools.pairwise(items)):
        raise _Unwritable("a required positional parameter follows an optional one")
    required_kw = [i for i in keyword if i.required]
    optional_kw = [i for i in keyword if not i.required]
    args = _ordered(rules, [*items, *required_kw, *optional_kw], _COMMA)
    head = " | ".join(ebnf_string(n) for n in usable)
    return f'({head}) "(" {args} ")"'


def _rest_parts(call: AllowedCall) -> tuple[str, str]:
    method, _, path = call.name.partition(" ")
    method = method.upper()
    if method not in REST_METHODS or not path.startswith("/") or " " in path:
        raise _Unwritable("REST name is not 'METHOD /path'")
    return method, path


def _path_expr(fmt: PromptFormat, path: str, specs: dict[str, ParamSpec], values: _Values, *, in_python: bool) -> str:
    """The path with each ``{param}`` a concrete value or the placeholder itself."""
    parts: list[str] = []
    pos = 0
    for m in _TEMPLATE_PARAM_RE.finditer(path):
        literal = path[pos : m.start()]
        if literal:
            parts.append(ebnf_string(_python_body(literal) if in_python else literal))
        name = m.group(1)
        spec = specs.get(name, ParamSpec(name, (ValueType.STRING,), True, ParamWhere.PATH))
        placeholder = ebnf_string("{" + (_python_body(name) if in_python else name) + "}")
        value = values.url_value(spec)
        parts.append(f"({value} | {placeholder})" if value else placeholder)
        pos = m.end()
    if path[pos:]:
        parts.append(ebnf_string(_python_body(path[pos:]) if in_python else path[pos:]))
    return " ".join(parts)


def _python_body(text: str) -> str:
    """``text`` as it is written inside a single-quoted Python string literal."""
    return python_string_literal(text)[1:-1]


def _query_expr(specs: Sequence[ParamSpec], values: _Values, rules: _Rules) -> str:
    items: list[_Item] = []
    for spec in _required_first(specs):
        value = values.url_value(spec)
        if value is None:
            if spec.required:
                raise _Unwritable(f"query parameter {spec.name!r} has no URL form")
            continue
        items.append(_Item(f"{ebnf_string(urllib.parse.quote(spec.name, safe='') + '=')} ({value})", spec.required))
    if not items:
        return ""
    inner = _ordered(rules, items, _AMP)
    return f'"?" {inner}' if any(i.required for i in items) else f'("?" {inner})?'


def _required_first(specs: Iterable[ParamSpec]) -> list[ParamSpec]:
    specs = list(specs)
    return [s for s in specs if s.required] + [s for s in specs if not s.required]


def _rest_text_call(fmt: PromptFormat, call: AllowedCall, values: _Values, rules: _Rules) -> str:
    """``METHOD /path?query {json body}``."""
    method, path = _rest_parts(call)
    if _TEXT_PATH_UNSAFE.search(path):
        raise _Unwritable("path cannot be written in the text form")
    by_where = _params_by_where(call)
    path_specs = {s.name: s for s in by_where[ParamWhere.PATH]}
    expr = f"{ebnf_string(method + ' ')} {_path_expr(fmt, path, path_specs, values, in_python=False)}"
    query = _query_expr(by_where[ParamWhere.QUERY], values, rules)
    if query:
        expr += f" {query}"
    body = by_where[ParamWhere.BODY]
    if body:
        obj = values.fields(_JSON, body)
        expr += f' " " {obj}' if any(s.required for s in body) else f' (" " {obj})?'
    return f"({expr})"


# Leading path segments of a server URL the verdict drops to match (check.MAX_BASE_SEGMENTS).
_MAX_BASE_SEGMENTS = 2


def _base_url_forms(base_urls: Sequence[str]) -> list[str]:
    """The server URLs a call may be written with, without a trailing "/": those the verdict
    matches (a base path of at most two segments; a longer one is cut to its origin)."""
    forms: list[str] = []
    for url in base_urls:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            continue
        segments = [s for s in parts.path.split("/") if s]
        base = "/" + "/".join(segments) if 0 < len(segments) <= _MAX_BASE_SEGMENTS else ""
        form = f"{parts.scheme}://{parts.netloc}{base}"
        if form not in forms and "{" not in form:
            forms.append(form)
    return forms


def _rest_requests_call(
    fmt: PromptFormat, call: AllowedCall, values: _Values, rules: _Rules, base_urls: Sequence[str] = ()
) -> str:
    """``requests.post('https://api.example/path', params={...}, json={...})``: the host one of
    the API's servers (``call.base_urls``, else ``base_urls``), else ``'{BASE_URL}/path'``."""
    method, path = _rest_parts(call)
    by_where = _params_by_where(call)
    path_specs = {s.name: s for s in by_where[ParamWhere.PATH]}
    forms = _base_url_forms(call.base_urls or base_urls)
    path_expr = _path_expr(fmt, path, path_specs, values, in_python=True)
    if forms:
        host = " | ".join(ebnf_string(_python_body(f)) for f in forms)
        url = f'"\'" ({host}) {path_expr} "\'"'
    else:  # a placeholder stands for the server, as path placeholders do for their values
        url = f'"\'" {ebnf_string(BASE_URL_PLACEHOLDER)} {path_expr} "\'"'
    args: list[_Item] = [_Item(url, True)]
    for kw, specs in (
        (REQUESTS_QUERY_KEYWORD, by_where[ParamWhere.QUERY]),
        (REQUESTS_BODY_KEYWORD, by_where[ParamWhere.BODY]),
    ):
        if not specs:
            continue
        obj = values.fields(_PYTHON, specs)
        args.append(_Item(f"{ebnf_string(kw + '=')} {obj}", any(s.required for s in specs)))
    return f'({ebnf_string(f"{REQUESTS_MODULE}.{method.lower()}(")} {_ordered(rules, args, _COMMA)} ")")'


def _params_by_where(call: AllowedCall) -> dict[ParamWhere, list[ParamSpec]]:
    out: dict[ParamWhere, list[ParamSpec]] = {w: [] for w in ParamWhere}
    for spec in call.params:
        out[spec.where].append(spec)
    return out


def _gorilla_call(call: AllowedCall, values: _Values, rules: _Rules, options: GrammarOptions) -> str:
    fmt = PromptFormat.GORILLA_V0
    if call.kind is CallKind.APIBENCH:
        _check_text(fmt, call.name, "api_call")
        return ebnf_string(call.name)
    if call.kind is CallKind.REST:
        _check_text(fmt, call.name, "name")
        forms: list[str] = []
        reasons: list[str] = []
        for style in options.rest_styles:
            try:
                if style is RestStyle.TEXT:
                    forms.append(_rest_text_call(fmt, call, values, rules))
                else:
                    forms.append(_rest_requests_call(fmt, call, values, rules, options.base_urls))
            except _Unwritable as exc:
                reasons.append(f"{style.value}: {exc}")
        if not forms:
            raise _Unwritable("; ".join(reasons))
        return " | ".join(forms)
    return _python_call(fmt, call, values, rules)


def _function_call(call: AllowedCall, values: _Values, rules: _Rules) -> str:
    """openfunctions_v2: ``name(kw=value, ...)``; an APIBench record is its api_call verbatim."""
    fmt = PromptFormat.OPENFUNCTIONS_V2
    if call.kind is CallKind.APIBENCH:
        _check_text(fmt, call.name, "api_call")
        return ebnf_string(call.name)
    keyword_call = AllowedCall(
        call.name,
        CallKind.FUNCTION,
        tuple(
            dataclasses.replace(s, where=ParamWhere.KEYWORD) for s in call.params if s.where is not ParamWhere.HEADER
        ),
    )
    return _python_call(fmt, keyword_call, values, rules)


def _tool_call(call: AllowedCall, values: _Values, rules: _Rules) -> str:
    """chat_tools: ``{"name": "<name>", "arguments": {...}}``."""
    _check_text(PromptFormat.CHAT_TOOLS, call.name, "name")
    for s in call.params:
        _check_text(PromptFormat.CHAT_TOOLS, s.name, "parameter name")
    arguments = values.fields(_JSON, (p for p in call.params if p.where is not ParamWhere.HEADER))
    head = ebnf_string('{"name": ' + _json_literal(call.name) + ', "arguments": ')
    return f'{head} {arguments} "}}"'


# ---------------------------------------------------------------------------------------------
# Whole answers


def build_call_grammar(
    fmt: PromptFormat, calls: Sequence[AllowedCall], options: GrammarOptions | None = None
) -> CallGrammar:
    """The grammar of an answer in ``fmt`` whose call part is one of ``calls`` (duplicates by
    name keep the first). Calls that cannot be written in ``fmt`` are dropped with a reason;
    raises :class:`NoAllowedCallsError` when none is left."""
    options = options or GrammarOptions()
    rules = _Rules()
    values = _Values(rules, options)
    alternatives: list[str] = []
    kept: list[AllowedCall] = []
    dropped: list[tuple[str, str]] = []
    seen: set[tuple[CallKind, str]] = set()
    for call in calls:
        if (call.kind, call.name) in seen:
            continue
        seen.add((call.kind, call.name))
        try:
            if fmt is PromptFormat.GORILLA_V0:
                expr = _gorilla_call(call, values, rules, options)
            elif fmt is PromptFormat.OPENFUNCTIONS_V2:
                expr = _function_call(call, values, rules)
            else:
                expr = _tool_call(call, values, rules)
        except _Unwritable as exc:
            dropped.append((call.name, str(exc)))
            continue
        alternatives.append(rules.fresh("call", expr))
        kept.append(call)
    if not kept:
        raise NoAllowedCallsError(fmt, dropped)
    rules.add("api_call", " | ".join(alternatives))
    prose = options.max_prose_chars
    calls_more = options.max_calls - 1
    if fmt is PromptFormat.GORILLA_V0:
        tail_markers = " | ".join(ebnf_string(gorilla_marker(m)) for m in GORILLA_TAIL_FIELDS)
        rules.add("sep", '" " | "\\n"')
        rules.add("domain", f"{ebnf_string(gorilla_marker(GORILLA_PROSE_FIELD) + ' ')} [^<\\n]{{0,{prose}}} sep")
        rules.add("tail_text", f'([^<] | "<" [^<] | "<<" [^<] | {tail_markers})*')
        rules.add("tail", f"sep {ebnf_string(gorilla_marker(GORILLA_TAIL_FIELDS[0]))} tail_text")
        rules.add("root", f'" "? domain? {ebnf_string(gorilla_marker(GORILLA_CALL_FIELD) + " ")} api_call tail?')
    elif fmt is PromptFormat.OPENFUNCTIONS_V2:
        mark = ebnf_string(FUNCTION_MARK)
        more = _at_most(rules, "more_calls", f'("\\n" | " ")? {mark} api_call', calls_more, sep=_EMPTY)
        rules.add("root", _seq(f'" "? {mark} api_call', more))
    else:
        rules.add("block", f"{ebnf_string(TOOL_CALL_OPEN + '[')} api_call {ebnf_string(']' + TOOL_CALL_CLOSE)}")
        more = _at_most(rules, "more_blocks", '"\\n" block', calls_more, sep=_EMPTY)
        rules.add("root", _seq(f"[^<]{{0,{prose}}} block", more))
    ebnf = rules.text()
    digest = hashlib.sha256(json.dumps([fmt.value, ebnf]).encode()).hexdigest()
    return CallGrammar(fmt, ebnf, tuple(kept), tuple(dropped), digest)


__all__ = [
    "AllowedCall",
    "CallGrammar",
    "CallKind",
    "GrammarOptions",
    "NoAllowedCallsError",
    "ParamSpec",
    "ParamWhere",
    "RestStyle",
    "ValueType",
    "build_call_grammar",
    "ebnf_string",
    "python_string_literal",
]
