"""The gRPC front end and its lifecycle: health, reflection, graceful drain.

start:    bind -> start; the health service mirrors the core's health (SERVING once the engine
          and the retriever answer; the core's monitor re-checks both and flips it both ways)
stop:     the core says NOT_SERVING for good (health enters graceful shutdown: load balancers
          stop sending) -> refuse new RPCs -> in-flight streams get the grace period to finish
          (the composition root drains every front end at once, then shuts the engine down)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apihelper.errors import ConfigurationError
from apihelper.service.core import Core
from apihelper.service.grpc.auth import BearerTokenInterceptor
from apihelper.service.grpc.guard import CallGuard
from apihelper.service.grpc.health import BoundedHealthServicer
from apihelper.service.grpc.servicer import ApiHelperServicer
from apihelper.service.settings import Settings, read_auth_token
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ApiHelper"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class GrpcFrontend:
    """A started gRPC server over a core it does not own."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace_seconds: float) -> None:
        """Refuse new calls; let the streams in flight finish within the grace period. Safe to
        call more than once."""
        await self.server.stop(grace_seconds)


async def start_grpc(settings: Settings, core: Core) -> GrpcFrontend:
    token = read_auth_token(settings)
    # The guard inside the token check: an unauthenticated call is refused whatever its bytes.
    interceptors: list[grpc.aio.ServerInterceptor] = [CallGuard(core.recorder)]
    if token:
        interceptors.insert(0, BearerTokenInterceptor(token, recorder=core.recorder))
    server = grpc.aio.server(interceptors=interceptors, options=_channel_options(settings))
    health_servicer = BoundedHealthServicer(
        core.recorder,
        max_watches=settings.max_health_watches,
        watch_timeout_seconds=settings.health_watch_timeout_seconds,
        stall_timeout_seconds=settings.stream_stall_timeout_seconds,
    )

    async def follow(serving: bool, final: bool) -> None:
        if final:
            await health_servicer.enter_graceful_shutdown()  # NOT_SERVING for every service, for good
            return
        state = _SERVING if serving else _NOT_SERVING
        await health_servicer.set("", state)
        await health_servicer.set(SERVICE_NAME, state)

    await follow(core.health.serving, False)
    core.health.subscribe(follow)
    pb_grpc.add_ApiHelperServicer_to_server(ApiHelperServicer(core), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    log.info("serving %s on %s:%d", SERVICE_NAME, settings.host, port)
    return GrpcFrontend(server, port, health_servicer)


def _channel_options(settings: Settings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Pings find dead peers behind NATs and load balancers; a client may ping us as often
        # as every 10 s without being cut off for abuse.
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Streams one connection may have open (more are refused with RST_STREAM): one peer
        # cannot take every Generate slot however many streams it opens.
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # ... counted as HTTP/2 counts them, so that a client that keeps to the limit queues its
        # calls (gRPC clients wait on SETTINGS_MAX_CONCURRENT_STREAMS) and never sees one refused.
        # grpc's "overload protection" (on by default) counts the streams the server has not yet
        # deallocated instead: a stream the client already saw end still counts for a while, and
        # the client's next call on that slot is reset (REFUSED_STREAM: UNAVAILABLE). With 100
        # concurrent calls on one channel, 38-63 failed so.
        ("grpc.http.overload_protection", 0),
    ]
    if settings.max_connection_age_seconds:
        # Clients reconnect on GOAWAY by themselves; streams in flight get the longest deadline
        # a call may have. What is still open after that (a stalled call's HTTP/2 stream) is closed.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_deadline_seconds * 1000)),
        ]
    return options


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert_file:
        return None
    try:
        key = Path(settings.tls_key_file).read_bytes()
        chain = Path(settings.tls_cert_file).read_bytes()
        client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    except OSError as exc:
        raise ConfigurationError(f"TLS files: {exc.strerror}: {exc.filename}") from exc
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=bool(client_ca))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to serve on: uvloop's where installed ("auto") or asked for, else asyncio's
    (None). Every stream shares this loop, and grpc.aio accepts each new call through several of
    its iterations: uvloop's cheaper iterations cut ~10% off time to first token at 256 streams
    (bench/load/README.md)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError("event_loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
