"""The HTTP front end's lifecycle: uvicorn serving the app in the service's own event loop.

``uvicorn.Server.serve()`` is a coroutine: it runs as a task beside grpc.aio, on the same loop,
over the same core. The composition root owns SIGTERM/SIGINT (uvicorn's own signal capture is
switched off) and drains both front ends together: ``stop`` closes the listening socket, lets
requests in flight finish within the grace period, then cancels what is left (which aborts
their engine requests). The MCP server's session manager (``/mcp``, on unless ``mcp`` is off)
runs from before the first request until HTTP has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

import uvicorn

from apihelper.errors import ConfigurationError
from apihelper.service.core import Core
from apihelper.service.http.app import HttpOptions, allowed_hosts, build_app
from apihelper.service.http.connections import ConnectionLimits, bounded_protocol
from apihelper.service.settings import Settings, read_auth_token

if TYPE_CHECKING:
    from apihelper.service.mcp.server import HttpEndpoint

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the signals to the composition root, which drains every front end at once."""
        yield


@dataclass
class HttpFrontend:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    mcp: _McpRun | None = None

    def refuse_new_connections(self) -> None:
        """Close the listening sockets now, in the caller's step (uvicorn's own loop would see
        ``should_exit`` up to 0.1 s later and accept in between). Safe to call more than once."""
        for listener in self.server.servers:
            listener.close()

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, give requests in flight ``grace_seconds`` (MCP tool calls among them),
        cancel the rest, then stop MCP's session manager. Safe to call more than once."""
        self.server.config.timeout_graceful_shutdown = math.ceil(grace_seconds)
        self.server.should_exit = True
        await asyncio.shield(self.task)
        if self.mcp is not None:
            await self.mcp.stop()


class _McpRun:
    """The MCP server's session manager, running (in a task of its own: its task group must be
    entered and left in one task) from before HTTP serves until HTTP has drained."""

    def __init__(self, running: contextlib.AbstractAsyncContextManager[None]) -> None:
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(running), name="apihelper-mcp")

    async def _run(self, running: contextlib.AbstractAsyncContextManager[None]) -> None:
        async with running:
            self._ready.set()
            await self._stopping.wait()

    async def started(self) -> None:
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait((ready, self._task), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()  # its failure, raised here

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.shield(self._task)


def _connection_cap(asked: int) -> int:
    """``asked``, or half the process's file-descriptor limit where that is lower: the other half
    stays for gRPC, the metrics endpoint, Milvus and the model's files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or asked <= soft // 2:
        return asked
    log.warning(
        "http_max_connections %d lowered to %d: half the open-file limit (ulimit -n %d)", asked, soft // 2, soft
    )
    return max(1, soft // 2)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"http_port: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


async def start_http(settings: Settings, core: Core, *, sock: socket.socket | None = None) -> HttpFrontend:
    """Serve the HTTP API on ``sock``, or on ``host:http_port``."""
    options = HttpOptions(
        auth_token=read_auth_token(settings),
        max_body_bytes=settings.max_message_bytes,
        send_timeout_seconds=settings.stream_stall_timeout_seconds,  # the same stall timeout as gRPC
        max_small_body_bytes=min(settings.http_max_small_body_bytes, settings.max_message_bytes),
        body_timeout_seconds=settings.http_body_timeout_seconds,
        max_pending_body_bytes=settings.http_max_pending_body_bytes,
        allowed_hosts=allowed_hosts(settings.http_allowed_hosts, settings.host),
    )
    limits = ConnectionLimits(
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
        header_timeout_seconds=settings.http_header_timeout_seconds,
        keepalive_timeout_seconds=settings.http_keepalive_timeout_seconds,
        max_connections=_connection_cap(settings.http_max_connections),
    )
    mcp_app, mcp = None, None
    if settings.mcp:
        from apihelper.service.mcp.server import ApiHelperMcp

        server_mcp = ApiHelperMcp(core, version=version("apihelper"))
        mcp_app = server_mcp.http_app(settings.max_message_bytes)
        mcp = _McpRun(server_mcp.running())
        await mcp.started()
    try:
        return await _serve(settings, core, options, limits, mcp_app, mcp, sock)
    except BaseException:
        if mcp is not None:
            await mcp.stop()
        raise


async def _serve(
    settings: Settings,
    core: Core,
    options: HttpOptions,
    limits: ConnectionLimits,
    mcp_app: HttpEndpoint | None,
    mcp: _McpRun | None,
    sock: socket.socket | None,
) -> HttpFrontend:
    config = uvicorn.Config(
        build_app(core, options, mcp_app),
        # h11 (not httptools, which bounds neither the header block nor its time), with the limits
        # of apihelper.service.http.connections; h11's own buffer bound stays as a backstop.
        http=bounded_protocol(limits),
        h11_max_incomplete_event_size=2 * settings.http_max_header_bytes,
        timeout_keep_alive=max(1, math.ceil(settings.http_keepalive_timeout_seconds)),
        lifespan="off",
        log_config=None,  # the service's logging, as configured by the composition root
        access_log=False,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        ssl_certfile=settings.tls_cert_file or None,
        ssl_keyfile=settings.tls_key_file or None,
        ssl_ca_certs=settings.tls_client_ca_file or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"HTTP TLS files: {exc}") from exc
    sock = sock if sock is not None else bind(settings.host, settings.http_port)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="apihelper-http")
    ready = asyncio.ensure_future(server.ready.wait())
    await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done() or not server.started:
        await asyncio.wait((task,))
        task.result()  # its failure, raised here
        raise ConfigurationError("the HTTP server stopped during start-up")
    port = int(sock.getsockname()[1])
    scheme = "https" if settings.tls_cert_file else "http"
    log.info("serving HTTP on %s://%s:%d", scheme, settings.host, port)
    return HttpFrontend(server, task, port, mcp)
