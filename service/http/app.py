"""The HTTP routes: JSON in, pipeline call, JSON or Server-Sent Events out. Nothing else.

Conversion lives in ``convert`` and ``openai`` (pure functions); the status of an error in
``apihelper.http_status`` (one table). Every call follows the rules a gRPC call follows, from
the one call policy (``apihelper.service.calls``): the bearer token (health, the spec and the web
app stay open; a refusal is counted), the stream limit (a generation over HTTP counts against the
limit gRPC streams meet; past it: 429 at once), a deadline (the ``X-Request-Timeout`` header in
seconds; without it the server's default; one past the server's maximum is cut to the maximum,
as gRPC cuts a client deadline; not a positive number: 400), which covers reading the body too,
the metrics (``rpc`` label: the route; outcomes named as gRPC names them), and cancellation: a
client that goes away, or a deadline that passes, cancels the handler and so aborts the engine
request.

``/mcp`` is the MCP server's streamable-HTTP endpoint (``apihelper.service.mcp``, which applies
the call policy to each tool call itself), behind the same bearer token.

Streams send the first event (the sources) only after retrieval succeeded, so a bad corpus
name is still a plain 400; an error after that is an ``error`` event (``data`` the error JSON)
and ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import json
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apihelper.errors import (
    BodyTimeoutError,
    DeadlineExceededError,
    InvalidRequestError,
    RequestTooLargeError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
)
from apihelper.http_status import CANCELLED, OK, error_body, http_outcome
from apihelper.retriever.types import RetrievedDoc
from apihelper.service.calls import Call, CallPolicy, Deadline, peer_address
from apihelper.service.core import Core
from apihelper.service.http import convert, openai
from apihelper.service.http.connections import TRANSPORT_STATE
from apihelper.service.http.openapi import openapi_spec
from apihelper.service.http.progress import ClientStalled, until_stalled
from apihelper.service.pipeline import CompletionEvent, GenerateParams, PipelineEvent, SourcesEvent

if TYPE_CHECKING:  # the MCP SDK is imported only when MCP is on (apihelper.service.http.server)
    from apihelper.service.mcp.server import HttpEndpoint

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout"
PING_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
COALESCE_SECONDS = 0.02  # a stream writes at most this often (the frames ready meanwhile at once)
COALESCE_FRAMES = 32  # frames that may wait for a stream's next write

Frames = list[ServerSentEvent]
Render = Callable[[PipelineEvent], Frames]


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


@dataclass(frozen=True)
class HttpOptions:
    auth_token: str  # "" : no auth
    max_body_bytes: int
    send_timeout_seconds: float  # a stream whose client reads nothing this long is dropped
    max_small_body_bytes: int = 65536  # the routes that take an instruction, not tools
    body_timeout_seconds: float = 30.0  # a body must arrive within this (and the call's deadline)
    allowed_hosts: frozenset[str] | None = None  # Host header names answered; None: any
    max_pending_body_bytes: int = 64 * 1024 * 1024  # bodies still arriving, over every connection


class BodyBudget:
    """Bytes of request bodies read so far and not yet parsed, over every connection: each
    body's limit and timeout alone let 512 connections hold 4 MiB each for 30 s. A chunk past the
    budget is refused (429, the connection closed: the rest of its body is not read). Single
    event loop: no lock needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise ResourceExhaustedError(
                f"the server holds {self.held} bytes of unfinished request bodies, its limit is {self.limit}"
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class _Body(enum.Enum):
    """What body a route takes: none, a small one (an instruction), or the full size (tools)."""

    NONE = "none"
    SMALL = "small"
    LARGE = "large"


def static_dir() -> Path:
    return Path(str(files("apihelper.service.http") / "static"))


def build_app(core: Core, options: HttpOptions, mcp: HttpEndpoint | None = None) -> ASGIApp:
    """The routes behind the Host check; ``mcp``: the MCP server's streamable-HTTP endpoint,
    served at ``/mcp`` behind the bearer token."""
    api = HttpApi(core, options)
    routes = api.routes()
    if mcp is not None:
        guarded = _TokenGuard(mcp, api._expected, core.calls)
        routes.append(Route("/mcp", guarded, methods=["GET", "POST", "DELETE"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    return HostGuard(app, options.allowed_hosts, core.calls)


class _TokenGuard:
    """MCP's endpoint behind the bearer token, refusing as :meth:`HttpApi._guard` does (401 with
    ``WWW-Authenticate: Bearer``, counted as ``UNAUTHENTICATED`` under the route), with a body
    MCP clients read (a JSON-RPC error)."""

    def __init__(self, mcp: HttpEndpoint, expected: bytes, calls: CallPolicy) -> None:
        self._mcp = mcp
        self._expected = expected
        self._calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._expected:
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                exc = UnauthenticatedError("missing or invalid bearer token")
                self._calls.refused(f"{scope['method']} /mcp", http_outcome(exc).code)
                body = self._mcp.refusal(exc)
                response = JSONResponse(body, status_code=http_outcome(exc).status)
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self._mcp.app(scope, receive, send)


# Sent with every response: the page loads only its own script and style, is framed by no site
# (clickjacking), and nothing is sniffed into another media type.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
HOST_REFUSED_RPC = "HTTP host"  # the rpc label of a request refused for its Host header
# Answered for any Host: an orchestrator's probes name the pod's address (Kubernetes' kubelet, a
# load balancer's health check), and what they return is no secret a rebound page could read.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class HostGuard:
    """Requests only for the allowed host names (DNS rebinding: a web page whose name an attacker
    points at 127.0.0.1 would otherwise read this API with the browser's own access; the
    :data:`PROBE_PATHS` excepted), and the
    :data:`SECURITY_HEADERS` on every response. ``allowed``: lower-case names without ports;
    ``None``: any."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None, calls: CallPolicy) -> None:
        self._app = app
        self._allowed = allowed
        self._calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._allowed is not None and scope["path"] not in PROBE_PATHS:
            host = _host_name(Headers(scope=scope).get("host", ""))
            if host not in self._allowed:
                self._calls.refused(HOST_REFUSED_RPC, "INVALID_ARGUMENT")
                exc = InvalidRequestError("host", "this server does not answer for that host name")
                await _error(exc)(scope, receive, _with_headers(send))
                return
        await self._app(scope, receive, _with_headers(send))


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sending


def _host_name(header: str) -> str:
    """The name in a Host header, lower-case, without its port (``[::1]:8000`` -> ``[::1]``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(setting: str, bound: str) -> frozenset[str] | None:
    """The Host names to answer for: ``setting``'s comma-separated names; empty: the loopback
    names and ``bound`` (the address the server listens on, unless a wildcard); ``*``: any."""
    names = {n.strip().lower() for n in setting.split(",") if n.strip()}
    if "*" in names:
        return None
    if names:
        return frozenset(_host_name(n) for n in names)
    loopback = {"localhost", "127.0.0.1", "[::1]"}
    if bound and bound not in ("0.0.0.0", "::", ""):
        loopback.add(f"[{bound.lower()}]" if ":" in bound else bound.lower())
    return frozenset(loopback)


class HttpApi:
    def __init__(self, core: Core, options: HttpOptions) -> None:
        self._core = core
        self._pipeline = core.pipeline
        self._limits = core.limits
        self._calls = core.calls
        self._streams = core.streams
        self._options = options
        self.bodies = BodyBudget(options.max_pending_body_bytes)
        self._expected = f"Bearer {options.auth_token}".encode() if options.auth_token else b""
        self._started = openai.now()
        self._spec = json.dumps(openapi_spec(core.pipeline.engine_info.model)).encode()

    def routes(self) -> list[BaseRoute]:
        guarded = [
            ("POST", "/rest_api", self.rest_api),
            ("POST", "/functional", self.functional),
            ("POST", "/inference", self.inference),
            ("POST", "/v1/generate", self.generate),
            ("POST", "/v1/retrieve", self.retrieve),
            ("GET", "/v1/corpora", self.corpora),
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("GET", "/v1/models", self.models),
        ]
        open_ = [
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.readyz),
            ("GET", "/openapi.json", self.spec),
        ]
        return [
            *(Route(path, self._guard(handler), methods=[method]) for method, path, handler in guarded),
            *(Route(path, handler, methods=[method]) for method, path, handler in open_),
            Route("/", self.index, methods=["GET"]),
            # follow_symlink: an editable install links the files in from the source tree
            Mount("/static", StaticFiles(directory=static_dir(), follow_symlink=True), name="static"),
        ]

    # -- routes --------------------------------------------------------------------------------

    async def rest_api(self, request: Request) -> Response:
        return await self._seed_retrieve(request, "rest", "/rest_api")

    async def functional(self, request: Request) -> Response:
        return await self._seed_retrieve(request, "functional", "/functional")

    async def _seed_retrieve(self, request: Request, corpus: str, route: str) -> Response:
        async def work(body: Any) -> Any:
            params = convert.seed_retrieve_params(body, corpus, route, self._limits)
            return convert.retrieve_json(await self._pipeline.retrieve(params))

        return await self._unary(request, f"POST {route}", work)

    async def retrieve(self, request: Request) -> Response:
        async def work(body: Any) -> Any:
            params = convert.retrieve_params(body, self._limits)
            return convert.retrieve_json(await self._pipeline.retrieve(params))

        return await self._unary(request, "POST /v1/retrieve", work)

    async def corpora(self, request: Request) -> Response:
        async def work(body: Any) -> Any:
            return convert.corpora_json(await self._pipeline.list_corpora())

        return await self._unary(request, "GET /v1/corpora", work, body=_Body.NONE)

    async def inference(self, request: Request) -> Response:
        async def work(body: Any) -> Any:
            params = convert.inference_params(body, self._limits)
            docs, completion = await self._generate_whole(params, _peer(request))
            return convert.inference_json(docs, completion)

        return await self._unary(request, "POST /inference", work)

    async def generate(self, request: Request) -> Response:
        def render(event: PipelineEvent) -> Frames:
            return [ServerSentEvent(convert.event_data(event), event=convert.event_name(event))]

        begun = await self._begin(request, "POST /v1/generate")
        if isinstance(begun, Response):
            return begun
        return await self._stream(begun, lambda: (convert.generate_params(begun.body, self._limits), render), None)

    async def chat_completions(self, request: Request) -> Response:
        begun = await self._begin(request, "POST /v1/chat/completions", body=_Body.LARGE)  # tools
        if isinstance(begun, Response):
            return begun
        body = begun.body
        if not isinstance(body, dict) or not body.get("stream"):

            async def work() -> Any:
                chat = openai.chat_request(body, self._limits, self._model, _request_id())
                docs, completion = await self._generate_whole(chat.params, begun.peer)
                return openai.chat_completion(completion, docs, chat, openai.now())

            return await self._answer(request, begun, work)

        def prepare() -> tuple[GenerateParams, Render]:
            chat = openai.chat_request(body, self._limits, self._model, _request_id())
            return chat.params, _chat_renderer(chat, openai.now())

        return await self._stream(begun, prepare, ServerSentEvent("[DONE]"))

    async def models(self, request: Request) -> Response:
        return JSONResponse(openai.models_json(self._model, self._started))

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process answers; the body says what gRPC's health says."""
        return JSONResponse({"status": _health_name(self._core.health.serving)})

    async def readyz(self, request: Request) -> Response:
        """Readiness: 200 while SERVING (engine and retriever answer, not draining), else 503."""
        serving = self._core.health.serving
        return JSONResponse({"status": _health_name(serving)}, status_code=200 if serving else 503)

    async def index(self, request: Request) -> Response:
        """The web app (its script and style under /static)."""
        return FileResponse(static_dir() / "index.html")

    async def spec(self, request: Request) -> Response:
        return Response(self._spec, media_type="application/json")

    # -- what every call gets ------------------------------------------------------------------

    @property
    def _model(self) -> str:
        return self._pipeline.engine_info.model

    def _guard(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the bearer token, when one is set (compared in constant time). A
        refusal is counted (``UNAUTHENTICATED``) under the route's label, as gRPC counts its own."""
        if not self._expected:
            return handler

        async def guarded(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                exc = UnauthenticatedError("missing or invalid bearer token")
                self._calls.refused(_route_label(request), http_outcome(exc).code)
                response = _error(exc)
                response.headers["www-authenticate"] = "Bearer"
                return response
            return await handler(request)

        return guarded

    async def _begin(self, request: Request, route: str, *, body: _Body = _Body.SMALL) -> _Begun | Response:
        """A call starts: counted, its deadline set (the call policy's rule: ``X-Request-Timeout``
        past the server's maximum is cut to it), its body read as JSON within that deadline and
        the body timeout, at most the route's body limit. A failure here is the call's answer."""
        call = self._calls.start(route)
        try:
            requested = self._calls.parse_seconds(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)
            limit = self._calls.deadline(requested, client_ends=False, named=TIMEOUT_HEADER)
            value = None
            if body is not _Body.NONE:
                size = self._options.max_body_bytes if body is _Body.LARGE else self._options.max_small_body_bytes
                async with _within(limit):
                    value = await self._json(request, size)
        except ClientGone:
            call.cancelled()
            return Response(status_code=CANCELLED.status)  # nobody reads it
        except Exception as exc:
            response = self._fail(call, exc)
            if isinstance(
                exc, (RequestTooLargeError, BodyTimeoutError, UnsupportedMediaTypeError, ResourceExhaustedError)
            ):
                response.headers["connection"] = "close"  # the rest of the body is not read
            return response
        return _Begun(call, limit, value, _peer(request))

    async def _unary(
        self, request: Request, route: str, work: Callable[[Any], Awaitable[Any]], *, body: _Body = _Body.SMALL
    ) -> Response:
        begun = await self._begin(request, route, body=body)
        if isinstance(begun, Response):
            return begun
        return await self._answer(request, begun, lambda: work(begun.body))

    async def _json(self, request: Request, limit: int) -> Any:
        """The body as JSON: declared ``application/json``, at most ``limit`` bytes, arrived within
        the body timeout, nested at most :data:`MAX_JSON_DEPTH` deep, its strings valid Unicode."""
        media = request.headers.get("content-type", "")
        if media.split(";", 1)[0].strip().lower() != "application/json":
            # Not a form or text/plain a web page may send across origins without asking.
            raise UnsupportedMediaTypeError(media)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(limit)
        chunks, size = [], 0
        seconds = self._options.body_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                async for chunk in request.stream():
                    if size + len(chunk) > limit:
                        raise RequestTooLargeError(limit)
                    self.bodies.take(len(chunk))  # given back below, once parsed or refused
                    size += len(chunk)
                    chunks.append(chunk)
            try:
                value = json.loads(b"".join(chunks))
            except RecursionError:
                raise InvalidRequestError("body", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidRequestError("body", f"is not JSON: {exc}") from None
        except ClientDisconnect:
            raise ClientGone from None
        except TimeoutError:
            raise BodyTimeoutError(f"the request body did not arrive within {seconds:g} s") from None
        finally:
            self.bodies.give(size)
        _check_json(value)
        return value

    async def _generate_whole(self, params: GenerateParams, peer: str) -> tuple[list[RetrievedDoc], CompletionEvent]:
        """Run a generation to its end under the stream limits (``peer``'s too): (the prompt's
        docs, the completion)."""
        with self._streams.admit(peer):
            docs: list[RetrievedDoc] = []
            async with contextlib.aclosing(self._pipeline.generate(params)) as events:
                async for event in events:
                    if isinstance(event, SourcesEvent):
                        docs = event.docs
                    elif isinstance(event, CompletionEvent):
                        return docs, event
        raise AssertionError("the pipeline ended without a completion")

    async def _answer(self, request: Request, begun: _Begun, work: Callable[[], Awaitable[Any]]) -> Response:
        """One JSON answer: counted, under the deadline, cancelled if the client goes away."""
        call = begun.call
        try:
            async with _within(begun.limit):
                result = await _cancel_on_disconnect(request.receive, work())
        except ClientGone:
            call.cancelled()
            return Response(status_code=CANCELLED.status)  # nobody reads it
        except Exception as exc:
            return self._fail(call, exc)
        call.finish(OK.code)
        return JSONResponse(result)

    async def _stream(
        self, begun: _Begun, prepare: Callable[[], tuple[GenerateParams, Render]], done: ServerSentEvent | None
    ) -> Response:
        """A generation as Server-Sent Events. Validation, admission and retrieval come first, so
        their errors get a status; the slot, the pipeline and the count are released however
        the response ends (even one the client left before it started)."""
        call = begun.call
        try:
            params, render = prepare()
            self._streams.acquire(begun.peer)
        except Exception as exc:
            return self._fail(call, exc)
        events = self._pipeline.generate(params)
        try:
            async with _within(begun.limit):
                first = await anext(events)
        except BaseException as exc:
            await events.aclose()
            self._streams.release(begun.peer)
            if not isinstance(exc, Exception):
                call.cancelled()
                raise
            return self._fail(call, exc)

        async def close() -> None:
            await events.aclose()  # a stream the client left before it started: nothing ran on
            self._streams.release(begun.peer)
            call.cancelled()  # unless it was counted already: ended, failed or stalled

        frames = _coalesced(self._frames(first, events, render, begun.limit, done, call), COALESCE_SECONDS)
        return _EventStream(frames, close, self._calls.stall_timeout_seconds, call.stalled)

    async def _frames(
        self,
        first: PipelineEvent,
        events: AsyncIterator[PipelineEvent],
        render: Render,
        limit: Deadline,
        done: ServerSentEvent | None,
        call: Call,
    ) -> AsyncIterator[ServerSentEvent]:
        for frame in render(first):
            yield frame
        try:
            while True:
                # The deadline covers waiting for the pipeline, never a yield: the consumer sends
                # between two waits, and a timeout must not cancel it there.
                async with _within(limit):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                for frame in render(event):
                    yield frame
        except Exception as exc:
            self._fail(call, exc)
            yield ServerSentEvent(convert.dumps(error_body(exc)), event="error" if done is None else None)
            return
        if done is not None:
            yield done
        call.finish(OK.code)

    def _fail(self, call: Call, exc: Exception) -> JSONResponse:
        """The call failed with ``exc``: the policy's rules (count, health re-check, INTERNAL
        logged), and the error's answer."""
        call.failed(exc, http_outcome(exc).code)
        return _error(exc)


# JSON a request may nest: far past any tool schema's, far below the interpreter's recursion limit
# (which code walking the value would otherwise meet: a traceback and a 500).
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_json(value: Any) -> None:
    """400 for JSON nested deeper than :data:`MAX_JSON_DEPTH` or holding a lone surrogate
    (``"\\ud800"`` parses, but no text can be encoded from it). Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidRequestError("body", "holds a lone UTF-16 surrogate, which is not text")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequestError("body", f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        else:
            stack.extend((v, depth + 1) for v in item)


@dataclass(frozen=True)
class _Begun:
    call: Call
    limit: Deadline
    body: Any
    peer: str  # the client address its streams count against


def _peer(request: Request) -> str:
    """The client address a request's streams count against (``calls.peer_address``)."""
    return peer_address(request.client.host if request.client is not None else "")


@contextlib.asynccontextmanager
async def _within(limit: Deadline) -> AsyncIterator[None]:
    """Run the block under the call's deadline; its passing is ``DeadlineExceededError``."""
    timer = asyncio.timeout_at(limit.at)
    try:
        async with timer:
            yield
    except TimeoutError:
        if timer.expired():
            raise DeadlineExceededError(limit.reason) from None
        raise


def _route_label(request: Request) -> str:
    """The ``rpc`` label of a guarded route (method and path template: bounded cardinality)."""
    route = request.scope.get("route")
    path = getattr(route, "path", "unknown")
    return f"{request.method} {path}"


async def _coalesced(frames: AsyncIterator[ServerSentEvent], seconds: float) -> AsyncGenerator[bytes, None]:
    """``frames`` as written: at once when nothing was written in the last ``seconds``, else the
    frames that arrive meanwhile together, ``seconds`` after the last write.

    One write per token made a TCP segment of ~50 bytes each, and a client's kernel that takes
    such segments without its application reading grows its receive buffer to megabytes
    (Linux accounts each small segment at several times its size and grows the buffer rather
    than close the window): the client's progress could not be seen
    (``apihelper.service.http.progress``). Writes at most every ``seconds`` carry several
    tokens each at the rates where that matters; a token after a pause is not delayed. At most
    :data:`COALESCE_FRAMES` frames wait: a write that blocks stops the pipeline in turn, so the
    engine sees a consumer that falls behind."""
    ready: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(COALESCE_FRAMES)
    failed: list[Exception] = []

    async def pump() -> None:
        try:
            async for frame in frames:
                await ready.put(frame)
        except Exception as exc:  # a bug of the frames' own: raised below, after what came first
            failed.append(exc)
        await ready.put(None)

    loop = asyncio.get_running_loop()
    pumping = asyncio.ensure_future(pump())
    written = -math.inf
    try:
        ended = False
        while not ended:
            batch = [await ready.get()]
            if (wait := written + seconds - loop.time()) > 0:
                await asyncio.sleep(wait)
            while not ready.empty():
                batch.append(ready.get_nowait())
            ended = batch[-1] is None
            chunk = b"".join(frame.encode() for frame in batch if frame is not None)
            if chunk:
                yield chunk
                written = loop.time()
        if failed:
            raise failed[0]
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


class _EventStream(EventSourceResponse):
    """An SSE response that runs ``close`` however it ends: finished, failed, cancelled by a
    disconnect, or never started because the client left first."""

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        close: Callable[[], Awaitable[None]],
        send_timeout: float,
        stalled: Callable[[], None],
    ) -> None:
        super().__init__(frames, ping=PING_SECONDS, send_timeout=send_timeout)
        self._stream_frames = frames
        self._send_timeout = send_timeout
        self._close = close
        self._stalled = stalled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get("state", {}).get(TRANSPORT_STATE)
        try:
            # The client's progress is watched on its socket: its sends alone would not block for
            # hundreds of KB (``apihelper.service.http.progress``).
            await until_stalled(super().__call__(scope, receive, send), transport, self._send_timeout)
        except* (SendTimeoutError, ClientStalled):
            # The client took nothing for the stall timeout: the stream ends here, with one log
            # line rather than the server's traceback of a failed app, and so does its connection
            # (closing it would wait for its unsent bytes to drain first).
            if transport is not None:
                transport.abort()
            self._stalled()
        finally:
            await self._stream_frames.aclose()  # stops its pump before the pipeline closes
            await self._close()


async def _cancel_on_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """``work``'s result, or ClientGone once the client disconnects (``work`` cancelled first)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _chat_renderer(chat: openai.ChatRequest, created: int) -> Render:
    """Pipeline events as chat completion chunks: the role first, content deltas, then the tool
    calls, the finish reason and the usage (``openai.final_chunks``)."""
    docs: list[RetrievedDoc] = []
    rid, model = chat.params.request_id, chat.model
    content = openai.StreamedContent(chat)

    def render(event: PipelineEvent) -> Frames:
        if isinstance(event, SourcesEvent):
            docs.extend(event.docs)
            out = [openai.chunk(rid, model, created, {"role": "assistant", "content": ""})]
        elif isinstance(event, CompletionEvent):
            out = openai.final_chunks(event, docs, chat, created, content)
        else:
            shown = content.delta(event.text)
            out = [openai.chunk(rid, model, created, {"content": shown})] if shown else []
        return [ServerSentEvent(convert.dumps(c)) for c in out]

    return render


def _error(exc: BaseException) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=http_outcome(exc).status)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in the same JSON shape as the API's own."""
    assert isinstance(exc, HTTPException)
    kind = "NOT_FOUND" if exc.status_code == 404 else "HTTP"
    body = {"error": {"message": exc.detail, "type": kind, "param": None, "code": exc.status_code}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _health_name(serving: bool) -> str:
    return "SERVING" if serving else "NOT_SERVING"


def _request_id() -> str:
    import uuid

    return uuid.uuid4().hex
