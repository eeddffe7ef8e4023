"""The gRPC health service with its streams bounded.

grpc's reference ``HealthServicer`` serves ``Watch`` streams without limit or end, writes them
while holding the lock that every status change takes (one client that stops reading would hold
up the next change for every watcher, and the drain's NOT_SERVING), and counts nothing. Health is
open to unauthenticated clients (load balancers), so here:

- ``Watch`` streams are limited (``max_health_watches``; more get RESOURCE_EXHAUSTED), end with OK
  after ``health_watch_timeout_seconds`` (a client watches again), and are written outside the
  lock under the stall timeout: a watcher that takes nothing is dropped;
- ``Check`` and ``Watch`` are counted like every RPC (``apihelper_requests_total``, and the
  in-flight gauge shows the open watches as ``rpc="Watch"``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from apihelper.service.calls import CallPolicy
from apihelper.service.grpc.servicer import StreamStalled, write_blocked, write_within

_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class BoundedHealthServicer(health.aio.HealthServicer):
    def __init__(
        self, calls: CallPolicy, *, max_watches: int, watch_timeout_seconds: float, stall_timeout_seconds: float
    ) -> None:
        super().__init__()
        self._calls = calls
        self._max_watches = max_watches
        self._watch_timeout = watch_timeout_seconds
        self._stall_timeout = stall_timeout_seconds
        self.watching = 0

    @property
    def _state(self) -> Any:
        """The reference servicer's own state (statuses, a condition per watched service): its
        stubs leave it out."""
        return self

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        count = self._calls.start("Check")
        code = grpc.StatusCode.OK
        try:
            if request.service not in self._state._server_status:
                code = grpc.StatusCode.NOT_FOUND
                count.finish(code.name)  # the reference servicer aborts
            return await super().Check(request, context)
        finally:
            count.finish(code.name)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        count = self._calls.start("Watch")
        code = grpc.StatusCode.OK
        try:
            if self.watching >= self._max_watches:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                count.finish(code.name)
                await context.abort(code, f"{self.watching} health watches open, the limit is {self._max_watches}")
            self.watching += 1
            ends = asyncio.get_running_loop().time() + self._watch_timeout
            try:
                async with asyncio.timeout_at(ends):
                    await self._follow(request.service, context, ends)
            except TimeoutError:
                # The watch's time is up: end with OK, the client watches again; or, when a write
                # still waits for the client, drop the call (no status can follow that write).
                if write_blocked():
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    raise asyncio.CancelledError from None
            finally:
                self.watching -= 1
        except StreamStalled:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            count.stalled()
            raise asyncio.CancelledError from None  # no status can reach it: drop the call
        except asyncio.CancelledError:
            if code is grpc.StatusCode.OK:  # not the dropped call above: the client went away
                code = grpc.StatusCode.CANCELLED
            raise
        finally:
            count.finish(code.name)

    async def _follow(self, service: str, context: Any, ends: float) -> None:
        """Write ``service``'s status now and after every change, until cancelled (at ``ends``)."""
        condition = self._state._server_watchers[service]
        self._state._watcher_count_by_service[service] += 1
        try:
            last = None
            while True:
                status = self._state._server_status.get(service, _UNKNOWN)
                if status != last:
                    response = health_pb2.HealthCheckResponse(status=status)
                    await write_within(context, response, self._stall_timeout, deadline=ends)
                    last = status
                async with condition:
                    # Re-read under the lock: a change between the write and here is not missed.
                    if self._state._server_status.get(service, _UNKNOWN) == last:
                        await condition.wait()
        finally:
            self._state._watcher_count_by_service[service] -= 1
            if self._state._watcher_count_by_service[service] == 0:
                del self._state._server_watchers[service]
                del self._state._watcher_count_by_service[service]
