"""The front ends of a running service, started and drained together over one core.

gRPC always; HTTP (``apihelper.service.http``) beside it in the same event loop when
``http_port`` is set. Draining is one step for both: the core says NOT_SERVING for good, then
both servers refuse new calls and give the streams in flight the same grace period at once
(not one grace after the other), then the core stops its probes and the pipeline's background
work. The engine, the retriever and the recorder belong to the caller, which releases them
after this (the composition root's exit stack).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apihelper.retriever.types import Retriever
from apihelper.service.core import Core, start_core
from apihelper.service.engine.protocol import Engine
from apihelper.service.grpc.server import GrpcFrontend, start_grpc
from apihelper.service.metrics import Recorder
from apihelper.service.pipeline import Pipeline
from apihelper.service.settings import Settings

if TYPE_CHECKING:
    from apihelper.service.http.server import HttpFrontend

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    core: Core
    grpc: GrpcFrontend
    http: HttpFrontend | None
    grace_seconds: float

    @property
    def port(self) -> int:
        """The gRPC port."""
        return self.grpc.port

    @property
    def http_port(self) -> int:
        """The HTTP port (0: HTTP is off)."""
        return self.http.port if self.http is not None else 0

    @property
    def pipeline(self) -> Pipeline:
        return self.core.pipeline

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new calls on every front end, let the streams in flight
        finish within the grace period. Safe to call more than once."""
        if self.http is not None:
            self.http.refuse_new_connections()  # before anyone can see NOT_SERVING
        await self.core.drain()
        # HTTP's drain runs beside gRPC's (one grace period for both). gRPC's starts right here,
        # in this step: a call that arrives once health says NOT_SERVING finds the server closed
        # (UNAVAILABLE), not accepted and then cut by the shutdown.
        http = asyncio.ensure_future(self.http.stop(self.grace_seconds)) if self.http is not None else None
        await self.grpc.stop(self.grace_seconds)
        if http is not None:
            await http
        await self.core.close()


async def start_server(
    settings: Settings,
    engine: Engine,
    retriever: Retriever,
    recorder: Recorder | None = None,
    *,
    http_socket: socket.socket | None = None,
) -> RunningServer:
    """Start the core and the front ends. ``http_socket`` (a bound socket: tests bind port 0)
    serves HTTP whatever ``http_port`` says; without it HTTP listens on ``host:http_port``
    unless that is 0. A failure after the core started releases what was started."""
    core = await start_core(settings, engine, retriever, recorder)
    grpc_frontend: GrpcFrontend | None = None
    try:
        grpc_frontend = await start_grpc(settings, core)
        http_frontend = None
        if http_socket is not None or settings.http_port:
            from apihelper.service.http.server import start_http

            http_frontend = await start_http(settings, core, sock=http_socket)
    except BaseException:
        if grpc_frontend is not None:
            await grpc_frontend.stop(0)
        await core.close()
        raise
    return RunningServer(core, grpc_frontend, http_frontend, settings.shutdown_grace_seconds)
