"""What every front end serves over: one pipeline, one stream limit, one health, one recorder.

gRPC (``apihelper.service.grpc``) and HTTP (``apihelper.service.http``) are two doors into the
same service. Both validate against the same :class:`RequestLimits`, admit streams through the
same :class:`StreamLimit` (a stream opened over HTTP counts against the limit a gRPC stream
meets), run calls under the same default deadline, report to the same recorder, and follow the
same :class:`Health`: SERVING only while the engine and the retriever answer, NOT_SERVING for
good once the service drains. Protocol types never reach this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from apihelper.errors import ApiHelperError
from apihelper.retriever.types import Retriever
from apihelper.service.calls import CallPolicy, StreamLimit
from apihelper.service.engine.protocol import Engine
from apihelper.service.metrics import NullRecorder, Recorder
from apihelper.service.pipeline import Pipeline
from apihelper.service.settings import Settings, api_base_urls

log = logging.getLogger(__name__)

# The lag probe's period: 20 wake-ups a second cost nothing measurable and catch stalls of a
# few milliseconds.
LOOP_LAG_PROBE_SECONDS = 0.05


@dataclass(frozen=True)
class RequestLimits:
    """What a request may ask for; built once from Settings and the engine's info."""

    max_instruction_bytes: int
    default_top_k: int
    max_top_k: int
    default_max_tokens: int
    max_model_len: int


def request_limits(settings: Settings, engine: Engine) -> RequestLimits:
    return RequestLimits(
        max_instruction_bytes=settings.max_instruction_bytes,
        default_top_k=settings.default_top_k,
        max_top_k=settings.max_top_k,
        default_max_tokens=min(settings.default_max_tokens, engine.info.max_model_len // 2),
        max_model_len=engine.info.max_model_len,
    )


# (serving, final): final is True once, when the service starts draining (NOT_SERVING for good).
HealthListener = Callable[[bool, bool], Awaitable[None]]


class Health:
    """SERVING while the engine and the retriever answer. Front ends subscribe to changes (gRPC's
    health service) or read :attr:`serving` (HTTP's /readyz)."""

    def __init__(self, engine: Engine, retriever: Retriever) -> None:
        self._engine = engine
        self._retriever = retriever
        self._listeners: list[HealthListener] = []
        self._checks: set[asyncio.Task[bool]] = set()
        self.serving = False
        self.draining = False

    def subscribe(self, listener: HealthListener) -> None:
        self._listeners.append(listener)

    async def check(self) -> bool:
        """Ask the engine and the retriever now; tell the listeners (nothing changes once draining)."""
        try:
            await self._engine.check_health()
            await self._retriever.check_health()
            ok = True
        except ApiHelperError as exc:
            log.warning("health check failed: %s", exc)
            ok = False
        if not self.draining:
            self.serving = ok
            for listener in self._listeners:
                await listener(ok, False)
        return ok

    def recheck_soon(self) -> None:
        """Re-check now rather than at the next poll (a call just met UNAVAILABLE); one at a time."""
        if not self._checks:
            task = asyncio.create_task(self.check())
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def drain(self) -> None:
        """NOT_SERVING for good: load balancers stop sending."""
        self.draining = True
        self.serving = False
        for listener in self._listeners:
            await listener(False, True)

    async def monitor(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.check()


@dataclass
class Core:
    """The protocol-neutral part of a running service. It owns the pipeline, the health monitor
    and the event-loop lag probe; the engine, the retriever and the recorder belong to whoever
    built them (the composition root)."""

    pipeline: Pipeline
    limits: RequestLimits
    streams: StreamLimit
    health: Health
    recorder: Recorder
    # The per-call rules every front end follows (deadline, outcome, stalls, failures).
    calls: CallPolicy
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def drain(self) -> None:
        """Stop re-checking health and say NOT_SERVING for good (the front ends drain next)."""
        if self._tasks:
            self._tasks[0].cancel()  # the monitor: nothing may flip health back to SERVING
        await self.health.drain()

    async def close(self) -> None:
        """After the front ends have drained: stop the probes, then the pipeline's background work.
        Safe to call more than once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pipeline.close()


async def start_core(
    settings: Settings, engine: Engine, retriever: Retriever, recorder: Recorder | None = None
) -> Core:
    recorder = recorder or NullRecorder()
    health = Health(engine, retriever)
    core = Core(
        pipeline=Pipeline(retriever, engine, recorder, base_urls=api_base_urls(settings)),
        limits=request_limits(settings, engine),
        streams=StreamLimit(settings.max_concurrent_streams, settings.max_streams_per_peer),
        health=health,
        recorder=recorder,
        calls=CallPolicy(
            recorder,
            health.recheck_soon,
            default_deadline_seconds=settings.default_deadline_seconds,
            max_deadline_seconds=settings.max_deadline_seconds,
            stall_timeout_seconds=settings.stream_stall_timeout_seconds,
        ),
    )
    await health.check()
    core._tasks = [
        asyncio.create_task(health.monitor(settings.health_check_interval_seconds), name="apihelper-health-monitor"),
        asyncio.create_task(probe_loop_lag(recorder, LOOP_LAG_PROBE_SECONDS), name="apihelper-loop-lag"),
    ]
    return core


async def probe_loop_lag(recorder: Recorder, period: float) -> None:
    """Sleep ``period`` over and over and record how much later than asked each wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(period)
        recorder.loop_lag(max(0.0, loop.time() - asked - period))
