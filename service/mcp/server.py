"""The MCP front end: five tools and two resources over the core every front end shares.

Coding agents reach documentation through the Model Context Protocol. This server (the official
SDK's ``MCPServer``) offers them what apihelper is:

- ``list_corpora``: the ingested corpora (name, format, doc count, version);
- ``search_apis``: ranked APIs for a query, each doc's text cut to a token budget
  (``max_tokens`` in all, counted with the engine's tokenizer: agents pay for every token);
- ``get_api``: one API's whole doc;
- ``write_call``: the generated call with its verdict and reasons (the Generate pipeline), in the
  model's own style, or as ``curl`` or Python ``requests`` for a REST call;
- ``check_call``: the verdict on a call the agent wrote itself (parsed, matched against the
  corpus, its arguments checked; its host checked against the API's servers).

and the resources ``apihelper://corpora`` and ``apihelper://api/{corpus}/{key}`` (the key
percent-encoded: ``POST%20%2Fsession``). Every tool is read-only toward the world (annotations
say so) and returns structured output described by a JSON Schema; verdicts are the checker's
own names (``apihelper.service.answers.check``), passed on as they are.

Every tool call and resource read follows the call policy of every front end
(``apihelper.service.calls``): counted in ``apihelper_requests_total`` under ``rpc="MCP <tool>"``
with its outcome named as gRPC names it, run under the server's default deadline, cancelled when
the client cancels (which aborts the engine request), a generation admitted by the same stream
limit gRPC and HTTP streams meet. Errors map to tool errors in one place (``errors``).

Transports: streamable HTTP, mounted at ``/mcp`` on the HTTP port by the HTTP front end (behind
its bearer token; stateless, JSON responses: each call is one HTTP request, drained with the
others at SIGTERM), and stdio through ``apihelper-mcp`` (``apihelper.service.mcp.stdio``). This
package is the only one that imports ``mcp``.

No ``from __future__ import annotations`` here: the SDK reads the tools' annotations at run time
(JSON Schemas), and their bounds come from the running service's limits.
"""

import asyncio
import contextlib
import contextvars
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import REQUEST_TIMEOUT, CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, TypeAdapter, ValidationError

from apihelper.errors import INVALID_ARGUMENT, DeadlineExceededError, InvalidRequestError, outcome_of
from apihelper.retriever.types import ApiDoc, CorpusInfo, RetrievalMode
from apihelper.service.answers.check import CallCheck, CheckedAnswer
from apihelper.service.calls import OK, Call, peer_address
from apihelper.service.core import Core
from apihelper.service.engine.protocol import SamplingParams
from apihelper.service.mcp import errors, render
from apihelper.service.pipeline import CheckParams, CompletionEvent, GenerateParams, RetrieveParams, SourcesEvent

T = TypeVar("T")

NAME = "apihelper"
INSTRUCTIONS = (
    "apihelper answers from the API documentation ingested into it (OpenAPI specs, Python "
    "packages, tool definitions). Call list_corpora to see which APIs it knows; search_apis to "
    "find the operation for a task; get_api for its whole doc; write_call to have a call written "
    "and checked; check_call to check a call you wrote against the docs before you run it."
)
TOOLS = ("list_corpora", "search_apis", "get_api", "write_call", "check_call")
DEFAULT_SEARCH_TOKENS = 600  # doc text per search_apis answer: a few operations, not a spec
MAX_SEARCH_TOKENS = 16384
MAX_CALL_CHARS = 16384  # a call to check: far past any real one
MAX_KEY_CHARS = 1024
MAX_CORPORA = 64

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# write_call samples: the same instruction may give another call (idempotent: no)
GENERATES = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=False)

# The pipeline's field names, as each tool calls its arguments.
_FIELDS = {"retrieval.corpora": "corpora", "retrieval.top_k": "top_k", "instruction": "instruction"}
_CORPUS = {"retrieval.corpora": "corpus"}  # the tools that take one corpus


# ---------------------------------------------------------------------------------- output types


@dataclass
class Corpus:
    name: str
    format: Annotated[str, Field(description="openapi | python | apibench | jsonl | functions")]
    doc_count: int
    embedding_model: str
    version: Annotated[str, Field(description="last ingest time (ISO 8601), empty when unknown")]


@dataclass
class Corpora:
    corpora: list[Corpus]


@dataclass
class LinkedApi:
    """The same API as another corpus describes it (a REST operation and the SDK function that
    calls it: ``ingest --link``)."""

    corpus: str
    key: str
    title: str


@dataclass
class ApiHit:
    key: Annotated[str, Field(description="the API's key in its corpus: 'METHOD /path', a dotted name, a tool name")]
    corpus: str
    title: str
    score: float
    text: Annotated[str, Field(description="the doc's text, cut to what is left of max_tokens")]
    tokens: Annotated[int, Field(description="tokens of text, by the served model's tokenizer")]
    truncated: Annotated[bool, Field(description="text is cut short: get_api gives the whole doc")]
    linked: Annotated[
        list[LinkedApi], Field(description="the same API in a linked corpus (REST operation <-> SDK function)")
    ]


@dataclass
class SearchResult:
    results: list[ApiHit]
    max_tokens: int
    tokens: Annotated[int, Field(description="tokens of all the texts together (at most max_tokens)")]


@dataclass
class ApiDocument:
    key: str
    corpus: str
    title: str
    text: str
    metadata: Annotated[dict[str, Any], Field(description="what the loader stored: schema, parameters, signature")]


@dataclass
class CheckedCall:
    call: Annotated[str, Field(description="the call as read from the text")]
    verdict: str
    reasons: list[str]
    api: Annotated[str, Field(description="the key of the API the call matched, empty when none")]
    suggestion: Annotated[str, Field(description="for an unknown API: the closest real key, when one is close")]


@dataclass
class Verdict:
    verdict: Annotated[
        str, Field(description="the worst of the calls' verdicts: valid, wrong_arguments, unknown_api ...")
    ]
    reasons: list[str]
    calls: list[CheckedCall]


@dataclass
class Source:
    key: str
    corpus: str
    score: float


@dataclass
class WrittenCall:
    call: Annotated[str, Field(description="the call in the style asked for")]
    style: str
    answer: Annotated[str, Field(description="the model's whole answer")]
    verdict: str
    reasons: list[str]
    calls: list[CheckedCall]
    sources: Annotated[list[Source], Field(description="the docs the model was shown")]
    model: str


# ---------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class HttpEndpoint:
    """What the HTTP front end mounts at ``/mcp``."""

    app: Callable[[Any, Any, Any], Awaitable[None]]  # ASGI
    refusal: Callable[[BaseException], dict[str, Any]]  # the body of a request refused before MCP (401)


# The peer of calls that came over stdio: the one local client that started the server.
STDIO_PEER = "stdio"


@dataclass
class _Outcome:
    """How the tool's own work ended (set by :meth:`ApiHelperMcp._run`), for the middleware."""

    code: str | None = None
    error: BaseException | None = None
    peer: str = STDIO_PEER  # the client address its streams count against


_OUTCOME: contextvars.ContextVar[_Outcome | None] = contextvars.ContextVar("apihelper_mcp_outcome", default=None)


class ApiHelperMcp:
    """The MCP server over ``core``: :attr:`server` for in-memory clients and stdio,
    :meth:`http_app` and :meth:`running` for streamable HTTP."""

    def __init__(self, core: Core, *, version: str = "") -> None:
        self._core = core
        self._pipeline = core.pipeline
        self._limits = core.limits
        self.server: MCPServer[Any] = MCPServer(NAME, version=version, instructions=INSTRUCTIONS)
        self.server.middleware.append(self._policy)
        self._register()

    # -- streamable HTTP -----------------------------------------------------------------------

    def http_app(self, max_body_bytes: int) -> HttpEndpoint:
        """The ASGI app of the streamable-HTTP endpoint (route it at ``/mcp``); stateless and
        JSON: every call is one request, which the HTTP server drains like any other.
        ``max_body_bytes``: the size limit every HTTP body meets (``max_message_bytes``). The
        SDK's own DNS-rebinding check is off: the HTTP front end checks the Host header of every
        request, /mcp's too, against one setting (``http_allowed_hosts``)."""
        self.server.streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=max_body_bytes,
        )
        return HttpEndpoint(StreamableHTTPASGIApp(self.server.session_manager), errors.refusal)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The streamable-HTTP session manager's lifetime (its task group): around serving."""
        async with self.server.session_manager.run():
            yield

    # -- the call policy -----------------------------------------------------------------------

    async def _policy(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Every tool call and resource read: counted, under the deadline, cancelled with the
        client; its outcome from the tool's own error (see :func:`apihelper.errors.outcome_of`), or
        INVALID_ARGUMENT for arguments the SDK rejected against the input schema."""
        if ctx.method == "tools/call":
            name = (ctx.params or {}).get("name")
            rpc = f"MCP {name}" if name in TOOLS else "MCP tools/call"  # bounded label values
        elif ctx.method == "resources/read":
            rpc = "MCP resources/read"
        else:
            return await call_next(ctx)
        policy = self._core.calls
        call = policy.start(rpc)
        client = getattr(ctx.request, "client", None)  # the HTTP request (none over stdio)
        outcome = _Outcome(peer=peer_address(client.host) if client is not None else STDIO_PEER)
        token = _OUTCOME.set(outcome)
        try:
            limit = policy.deadline(None, client_ends=False)
            timer = asyncio.timeout_at(limit.at)
            try:
                async with timer:
                    result = await call_next(ctx)
            except TimeoutError:
                if not timer.expired():
                    raise
                exc = DeadlineExceededError(limit.reason)
                call.failed(exc, outcome_of(exc))
                if ctx.method == "tools/call":
                    return CallToolResult(
                        content=[TextContent(type="text", text=errors.error_text(exc))], is_error=True
                    )
                raise MCPError(REQUEST_TIMEOUT, errors.error_text(exc)) from None
        except asyncio.CancelledError:
            call.cancelled()
            raise
        except BaseException as exc:
            _finish(call, outcome, exc)
            raise
        finally:
            _OUTCOME.reset(token)
        _finish(call, outcome, ToolError("rejected by the SDK") if _is_error(result) else None)
        return result

    async def _run(
        self,
        work: Awaitable[T],
        fields: Mapping[str, str] = _FIELDS,
        error: type[ToolError] | type[ResourceError] = ToolError,
    ) -> T:
        """A tool's (or a resource's) work; a failure becomes the SDK's ``error`` with the text
        of :func:`errors.error_text` (our tree, named by the tool's own arguments), and the
        middleware learns its outcome."""
        outcome = _OUTCOME.get()
        try:
            return await work
        except Exception as exc:
            if outcome is not None:
                outcome.code, outcome.error = outcome_of(exc), exc
            raise error(errors.error_text(exc, fields)) from None

    # -- tools ---------------------------------------------------------------------------------

    def _register(self) -> None:
        limits = self._limits
        server = self.server

        @server.tool(annotations=READ_ONLY, title="List the API corpora")
        async def list_corpora() -> Corpora:
            """The corpora of API docs this server knows: name, format, number of docs, version."""
            return await self._run(self._list_corpora())

        @server.tool(annotations=READ_ONLY, title="Search APIs")
        async def search_apis(
            query: Annotated[str, Field(description="what you want to do, in words")],
            corpora: Annotated[
                list[str] | None,
                Field(description="corpora to search (list_corpora); none: all", max_length=MAX_CORPORA),
            ] = None,
            top_k: Annotated[int, Field(ge=1, le=limits.max_top_k, description="how many APIs")] = limits.default_top_k,
            max_tokens: Annotated[
                int, Field(ge=1, le=MAX_SEARCH_TOKENS, description="doc text in all, in the model's tokens")
            ] = DEFAULT_SEARCH_TOKENS,
        ) -> SearchResult:
            """The APIs that best match a task, best first, each with its doc cut to a token budget."""
            fields = {**_FIELDS, "instruction": "query"}
            return await self._run(self._search(query, corpora, top_k, max_tokens), fields)

        @server.tool(annotations=READ_ONLY, title="Get one API's doc")
        async def get_api(
            key: Annotated[str, Field(description="the API's key, as search_apis gives it", max_length=MAX_KEY_CHARS)],
            corpus: Annotated[str, Field(description="its corpus")],
        ) -> ApiDocument:
            """One API's whole doc: text, schema, parameters, signature."""
            return await self._run(self._get_api(key, corpus), _CORPUS)

        @server.tool(annotations=GENERATES, title="Write an API call")
        async def write_call(
            instruction: Annotated[str, Field(description="what the call should do")],
            corpora: Annotated[
                list[str] | None, Field(description="corpora to draw on; none: all", max_length=MAX_CORPORA)
            ] = None,
            style: Annotated[
                Literal["native", "curl", "requests"],
                Field(description="native: as the model writes it; curl or requests: a REST call rewritten so"),
            ] = "native",
        ) -> WrittenCall:
            """A call for the instruction, written by the served model from the retrieved docs,
            with the verdict of checking it against them."""
            return await self._run(self._write(instruction, corpora, style))

        @server.tool(annotations=READ_ONLY, title="Check an API call")
        async def check_call(
            call: Annotated[
                str,
                Field(
                    description="the call: Python (client.sessions.create(...)), requests.post(...), curl ..., "
                    "or 'METHOD /path'",
                    max_length=MAX_CALL_CHARS,
                ),
            ],
            corpus: Annotated[str, Field(description="the corpus of the API it calls")],
            question: Annotated[
                str | None, Field(description="what the call is meant to do: its docs are searched first")
            ] = None,
        ) -> Verdict:
            """Check a call you wrote against the docs: does the API exist (on that host), do the
            arguments fit it. The verdict and the reasons."""
            fields = {**_CORPUS, "instruction": "question"}
            return await self._run(self._check(call, corpus, question or ""), fields)

        @server.resource("apihelper://corpora", name="corpora", mime_type="application/json")
        async def corpora_resource() -> str:
            """The corpora (as list_corpora gives them)."""
            return json.dumps(_plain(await self._run(self._list_corpora(), error=ResourceError)))

        @server.resource("apihelper://api/{corpus}/{key}", name="api", mime_type="application/json")
        async def api_resource(corpus: str, key: str) -> str:
            """One API's doc (as get_api gives it); the key percent-encoded."""
            return json.dumps(_plain(await self._run(self._get_api(key, corpus), _CORPUS, ResourceError)))

    # -- the work ------------------------------------------------------------------------------

    async def _list_corpora(self) -> Corpora:
        return Corpora([_corpus(info) for info in await self._pipeline.list_corpora()])

    async def _search(self, query: str, corpora: list[str] | None, top_k: int, max_tokens: int) -> SearchResult:
        params = RetrieveParams(
            _instruction(query, "query", self._limits.max_instruction_bytes),
            _corpora(corpora),
            top_k,
            RetrievalMode.HYBRID,
        )
        docs = (await self._pipeline.retrieve(params)).docs
        cut = await self._pipeline.trim_texts([d.doc.text for d in docs], max_tokens)
        hits = [
            ApiHit(d.doc.key, d.corpus, d.doc.title, d.score, text, tokens, len(text) < len(d.doc.text), _links(d.doc))
            for d, (text, tokens) in zip(docs, cut, strict=True)
        ]
        return SearchResult(hits, max_tokens, sum(h.tokens for h in hits))

    async def _get_api(self, key: str, corpus: str) -> ApiDocument:
        if not key.strip():
            raise InvalidRequestError("key", "must not be empty")
        doc = await self._pipeline.get_api(_corpus_name(corpus), key)
        return _document(doc, corpus)

    async def _write(self, instruction: str, corpora: list[str] | None, style: str) -> WrittenCall:
        limits = self._limits
        params = GenerateParams(
            retrieval=RetrieveParams(
                _instruction(instruction, "instruction", limits.max_instruction_bytes),
                _corpora(corpora),
                limits.default_top_k,
                RetrievalMode.HYBRID,
            ),
            sampling=SamplingParams(max_tokens=limits.default_max_tokens),
            prompt_format=None,
            request_id=uuid.uuid4().hex,
        )
        completion, sources = None, []
        outcome = _OUTCOME.get()
        peer = outcome.peer if outcome is not None else STDIO_PEER
        with self._core.streams.admit(peer):  # a generation counts against the limits gRPC streams meet
            async with contextlib.aclosing(self._pipeline.generate(params)) as events:
                async for event in events:
                    if isinstance(event, SourcesEvent):
                        sources = [Source(d.doc.key, d.corpus, d.score) for d in event.docs]
                    elif isinstance(event, CompletionEvent):
                        completion = event
        if completion is None:
            raise AssertionError("the pipeline ended without a completion")
        checked = _verdict_of(completion.verdict.value, completion.verdict_reasons, completion.checks)
        call, used = _styled(completion.checks, style)
        return WrittenCall(
            call, used, completion.text, checked.verdict, checked.reasons, checked.calls, sources, completion.model
        )

    async def _check(self, call: str, corpus: str, question: str) -> Verdict:
        if not call.strip():
            raise InvalidRequestError("call", "must not be empty")
        if question:
            question = _instruction(question, "question", self._limits.max_instruction_bytes)
        params = CheckParams(call, _corpus_name(corpus), question, self._limits.default_top_k)
        checked: CheckedAnswer = await self._pipeline.check_call(params)
        return _verdict_of(checked.verdict.value, checked.reasons, checked.checks)


def _finish(call: Call, outcome: _Outcome, failure: BaseException | None) -> None:
    """Count the call: the tool's own outcome when it set one, else OK, or INVALID_ARGUMENT for a
    call the SDK refused."""
    if call.finished:
        return
    if outcome.code is not None and outcome.error is not None:
        call.failed(outcome.error, outcome.code)
    elif failure is not None:
        # What the SDK refused before any tool ran: arguments against the input schema, an unknown
        # tool or resource (protocol errors). Anything else is a bug.
        refused = isinstance(failure, ToolError | MCPError | ValidationError)
        call.failed(failure, INVALID_ARGUMENT if refused else outcome_of(failure))
    else:
        call.finish(OK)


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return result.is_error
    return isinstance(result, dict) and bool(result.get("isError"))


def _instruction(text: str, name: str, max_bytes: int) -> str:
    if not text.strip():
        raise InvalidRequestError(name, "must not be empty")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise InvalidRequestError(name, f"is {size} bytes, over the limit of {max_bytes}")
    return text


def _corpora(corpora: list[str] | None) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(c.strip() for c in corpora or ()))
    if any(not c for c in names):
        raise InvalidRequestError("corpora", "corpus names must not be empty")
    return names


def _corpus_name(corpus: str) -> str:
    if not corpus.strip():
        raise InvalidRequestError("corpus", "must not be empty")
    return corpus.strip()


def _corpus(info: CorpusInfo) -> Corpus:
    version = info.last_ingest.isoformat() if info.last_ingest is not None else ""
    return Corpus(info.name, info.format.value, info.doc_count, info.embedding_model, version)


def _links(doc: ApiDoc) -> list[LinkedApi]:
    """The doc's links to another corpus, as ``retriever.links`` stores them in its metadata."""
    links = doc.metadata.get("links")
    if not isinstance(links, list):
        return []
    return [
        LinkedApi(str(link["corpus"]), str(link["key"]), str(link.get("title", "")))
        for link in links
        if isinstance(link, dict) and "corpus" in link and "key" in link
    ]


def _document(doc: ApiDoc, corpus: str) -> ApiDocument:
    metadata = json.loads(json.dumps(dict(doc.metadata), default=str))  # JSON whatever the loader stored
    return ApiDocument(doc.key, corpus, doc.title, doc.text, metadata)


def _checked(check: CallCheck) -> CheckedCall:
    return CheckedCall(check.call.raw, check.verdict.value, list(check.reasons), check.doc_key, check.suggestion)


def _verdict_of(verdict: str, reasons: tuple[str, ...], checks: list[CallCheck]) -> Verdict:
    return Verdict(verdict, list(reasons), [_checked(c) for c in checks])


def _styled(checks: list[CallCheck], style: str) -> tuple[str, str]:
    """The first call in ``style``; native where it cannot be written so (not a REST call)."""
    if not checks:
        return "", "native"
    call = checks[0].call
    written = render.render(call, style)
    return (written, style) if written is not None else (call.raw, "native")


def _plain(value: Any) -> Any:
    """A tool's output dataclass as JSON-ready data (a resource's body)."""
    return TypeAdapter(type(value)).dump_python(value, mode="json")
