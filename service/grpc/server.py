"""The gRPC server and its lifecycle: health, reflection, graceful drain.

start:    bind -> start -> health SERVING once the engine and the retriever answer
running:  a monitor re-checks both every few seconds and flips health both ways; a probe
          measures the event loop's lag for the metrics
stop:     health NOT_SERVING at once (load balancers stop sending) -> refuse new RPCs ->
          in-flight streams get ``shutdown_grace_seconds`` to finish (the engine is shut down
          after this by its owner, the composition root)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apihelper.errors import ApiHelperError, ConfigurationError
from apihelper.retriever.types import Retriever
from apihelper.service.engine.protocol import Engine
from apihelper.service.grpc.auth import BearerTokenInterceptor
from apihelper.service.grpc.convert import RequestLimits
from apihelper.service.grpc.servicer import ApiHelperServicer
from apihelper.service.metrics import NullRecorder, Recorder
from apihelper.service.pipeline import Pipeline
from apihelper.service.settings import Settings, read_auth_token
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ApiHelper"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The lag probe's period: 20 wake-ups a second cost nothing measurable and catch stalls of a
# few milliseconds.
LOOP_LAG_PROBE_SECONDS = 0.05


@dataclass
class RunningServer:
    """A started gRPC server. It owns the server, its health, its monitor tasks and the pipeline;
    the engine, the retriever and the recorder it serves belong to whoever built them."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    pipeline: Pipeline
    grace_seconds: float
    _monitor: asyncio.Task[None]
    _lag_probe: asyncio.Task[None]

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new calls, let the streams in flight finish within the
        grace period. Safe to call more than once."""
        self._monitor.cancel()
        await self.health.enter_graceful_shutdown()  # NOT_SERVING for every service, for good
        await self.server.stop(self.grace_seconds)
        self._lag_probe.cancel()  # after the drain: the lag while draining is worth recording
        for task in (self._monitor, self._lag_probe):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pipeline.close()


async def start_server(
    settings: Settings, engine: Engine, retriever: Retriever, recorder: Recorder | None = None
) -> RunningServer:
    limits = RequestLimits(
        max_instruction_bytes=settings.max_instruction_bytes,
        default_top_k=settings.default_top_k,
        max_top_k=settings.max_top_k,
        default_max_tokens=min(settings.default_max_tokens, engine.info.max_model_len // 2),
        max_model_len=engine.info.max_model_len,
    )
    token = read_auth_token(settings)
    server = grpc.aio.server(
        interceptors=[BearerTokenInterceptor(token)] if token else [],
        options=_channel_options(settings),
    )
    recorder = recorder or NullRecorder()
    health_servicer = health.aio.HealthServicer()
    health_checks: set[asyncio.Task[bool]] = set()

    def recheck_health() -> None:
        if not health_checks:  # one re-check at a time is enough
            task = asyncio.create_task(_update_health(health_servicer, engine, retriever))
            health_checks.add(task)
            task.add_done_callback(health_checks.discard)

    pipeline = Pipeline(retriever, engine, recorder)
    servicer = ApiHelperServicer(
        pipeline,
        limits,
        recorder,
        max_concurrent_streams=settings.max_concurrent_streams,
        default_deadline_seconds=settings.default_deadline_seconds,
        on_unavailable=recheck_health,
    )
    pb_grpc.add_ApiHelperServicer_to_server(servicer, server)
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
    await _update_health(health_servicer, engine, retriever)
    monitor = asyncio.create_task(
        _monitor_health(health_servicer, engine, retriever, settings.health_check_interval_seconds),
        name="apihelper-health-monitor",
    )
    lag_probe = asyncio.create_task(_probe_loop_lag(recorder, LOOP_LAG_PROBE_SECONDS), name="apihelper-loop-lag")
    log.info("serving %s on %s:%d", SERVICE_NAME, settings.host, port)
    return RunningServer(server, port, health_servicer, pipeline, settings.shutdown_grace_seconds, monitor, lag_probe)


def _channel_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Pings find dead peers behind NATs and load balancers; a client may ping us as often
        # as every 10 s without being cut off for abuse.
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


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


async def _update_health(servicer: health.aio.HealthServicer, engine: Engine, retriever: Retriever) -> bool:
    try:
        await engine.check_health()
        await retriever.check_health()
        ok = True
    except ApiHelperError as exc:
        log.warning("health check failed: %s", exc)
        ok = False
    state = _SERVING if ok else _NOT_SERVING
    await servicer.set("", state)
    await servicer.set(SERVICE_NAME, state)
    return ok


async def _probe_loop_lag(recorder: Recorder, period: float) -> None:
    """Sleep ``period`` over and over and record how much later than asked each wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(period)
        recorder.loop_lag(max(0.0, loop.time() - asked - period))


async def _monitor_health(
    servicer: health.aio.HealthServicer, engine: Engine, retriever: Retriever, interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        await _update_health(servicer, engine, retriever)


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
