"""The ApiHelper servicer: protobuf in, pipeline call, protobuf out. Nothing else.

Validation and conversion live in ``convert``; status mapping in ``status`` (errors that are
not ``ApiHelperError`` are bugs: logged there and sent as INTERNAL without details). A client
that goes away or whose deadline passes cancels the handler task; the ``CancelledError`` is
re-raised here, after being counted, so it reaches the engine stream, which aborts the request.

Streams cannot outlive their welcome: a client deadline is cut to the server's maximum (calls
without one get the default), and each message is written under the stall timeout. A client that
takes no message for that long (a zero flow-control window, a peer that stopped reading) ends the
stream: the handler leaves, which closes the pipeline and aborts the engine request, and frees
its Generate slot. No status can reach such a client (its window is shut), so none is sent; the
HTTP/2 stream itself lingers in the transport until the connection closes (a peer that stops
reading stops answering keepalive pings; at the latest ``max_connection_age_seconds`` plus
``max_deadline_seconds``), at most ``max_streams_per_connection`` of them per connection.
When the server's own deadline lands during a write, the write is first given a moment to be
taken: a client that reads gets DEADLINE_EXCEEDED; only one whose write flow control still holds
is dropped without a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import grpc

from apihelper.errors import DeadlineExceededError
from apihelper.grpc_status import status_code
from apihelper.service.calls import DEADLINE_EXCEEDED, OK, peer_address
from apihelper.service.core import Core
from apihelper.service.grpc import convert, status
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class StreamStalled(Exception):
    """A write waited longer than the stall timeout: the client is not reading."""


# How long a write that the caller's own deadline interrupts may still take to be handed to the
# transport. A client that reads has a window open and its message goes at once; only a write
# that flow control holds is still waiting after this.
WRITE_SETTLE_SECONDS = 1.0

# Tasks whose write the deadline interrupted and flow control still held after the settle time:
# their call has a send in progress that never completes, so no status can follow it.
_BLOCKED_WRITES: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def write_within(
    context: grpc.aio.ServicerContext[Any, Any], message: Any, seconds: float, *, deadline: float | None = None
) -> None:
    """``context.write(message)``, or :class:`StreamStalled` once it has waited ``seconds``.

    ``deadline`` is the loop time at which the caller's own timeout cancels it (``None``: none).
    When that lands during the write, the cancellation is re-raised only once the write has
    settled: it is given up to :data:`WRITE_SETTLE_SECONDS` (within ``seconds``) to be taken. A
    write still waiting then is held by flow control, and :func:`write_blocked` tells the
    caller, which must not send a status after it. Without the wait, every deadline that lands
    while an ordinary message is on its way would look like a client that does not read, and
    that client would get no status at all.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    if deadline is None or deadline > give_up:
        # The write is taken, or stalls, before the deadline can land on it: no task needed
        # (the common case; a cancellation here is the client going away, which wants no status).
        try:
            async with asyncio.timeout_at(give_up):  # fires before the deadline's timer
                await context.write(message)
        except TimeoutError:
            raise StreamStalled from None
        return
    write = asyncio.ensure_future(context.write(message))
    try:
        async with asyncio.timeout_at(give_up):
            await asyncio.shield(write)
    except TimeoutError:
        write.cancel()
        raise StreamStalled from None
    except asyncio.CancelledError:
        try:
            await asyncio.wait({write}, timeout=max(0.0, min(WRITE_SETTLE_SECONDS, give_up - loop.time())))
        finally:  # a second cancellation ends the wait too
            if not write.done():
                write.cancel()
                task = asyncio.current_task()
                if task is not None:
                    _BLOCKED_WRITES.add(task)
            elif not write.cancelled():
                write.exception()  # retrieved: a write to a client that went away fails, the cancellation says why
        raise


def _peer_gone(exc: Exception) -> bool:
    """Whether ``exc`` is grpc failing an operation on a call whose client is gone (grpc.aio's
    ``grpc._cython.cygrpc.ExecuteBatchError``, a class its public API does not name)."""
    cls = type(exc)
    return cls.__name__ == "ExecuteBatchError" and cls.__module__.startswith("grpc.")


def write_blocked() -> bool:
    """Whether this task's last write was interrupted and flow control still held it (and forget it)."""
    task = asyncio.current_task()
    if task is None or task not in _BLOCKED_WRITES:
        return False
    _BLOCKED_WRITES.discard(task)
    return True


class ApiHelperServicer(pb_grpc.ApiHelperServicer):
    """The RPCs over the core every front end shares: its pipeline, limits, stream limit and
    per-call rules (``apihelper.service.calls``: deadline, outcome, stalls, failures)."""

    def __init__(self, core: Core) -> None:
        self._pipeline = core.pipeline
        self._limits = core.limits
        self._streams = core.streams
        self._calls = core.calls
        self._stall_timeout = core.calls.stall_timeout_seconds

    @contextlib.asynccontextmanager
    async def _rpc(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[float | None]:
        """Record the RPC's outcome and turn errors into a status (mid-stream ones too). Yields
        the loop time of the server's own deadline for the call (``None``: the client's holds)."""
        call = self._calls.start(name)
        # No deadline: the server's default; one past the maximum: cut to it (the policy's rule).
        limit = self._calls.deadline(context.time_remaining(), client_ends=True)
        deadline = limit.at
        try:
            async with asyncio.timeout_at(deadline):
                yield deadline
        except TimeoutError:
            exc = DeadlineExceededError(limit.reason)
            if write_blocked():  # the deadline passed while a write waited for the client
                log.info("%s: %s while the client took nothing; the stream ends", name, limit.reason)
                call.finish(DEADLINE_EXCEEDED)
                raise asyncio.CancelledError from None  # no status can follow that write
            call.failed(exc, status_code(exc).name)
            await status.abort(context, exc)
        except StreamStalled:
            # The client takes nothing: no status can reach it. Leaving as cancelled lets grpc
            # drop the call without trying (and logging the failure of) a status write.
            call.stalled()
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            # The client went away or its deadline passed: let cancellation reach the engine.
            remaining = context.time_remaining()
            call.cancelled(expired=remaining is not None and remaining <= 0)
            raise
        except Exception as exc:  # status.abort maps it; CancelledError passes
            if _peer_gone(exc):
                # A write to a client whose connection went away (grpc's ExecuteBatchError): the
                # client's leaving, not a bug. Cancelled, with one log line and no status to send.
                log.info("%s: the client went away during a write (%s)", name, context.peer())
                call.cancelled()
                raise asyncio.CancelledError from None
            call.failed(exc, status_code(exc).name)
            await status.abort(context, exc)
        finally:
            call.finish(OK)

    async def Generate(  # type: ignore[override]  # writes with context.write, under the stall timeout
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse]
    ) -> None:
        async with self._rpc("Generate", context) as deadline:
            with self._streams.admit(peer_address(context.peer())):  # over a limit: RESOURCE_EXHAUSTED at once
                params = convert.generate_params(request, self._limits)
                async with contextlib.aclosing(self._pipeline.generate(params)) as events:
                    async for event in events:
                        response = convert.generate_response(event)
                        await write_within(context, response, self._stall_timeout, deadline=deadline)

    async def Retrieve(
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext[pb.RetrieveRequest, pb.RetrieveResponse]
    ) -> pb.RetrieveResponse:
        async with self._rpc("Retrieve", context):
            params = convert.retrieve_params(request, self._limits)
            return convert.retrieve_response(await self._pipeline.retrieve(params))
        raise AssertionError("unreachable: _rpc re-raises or aborts")

    async def ListCorpora(
        self,
        request: pb.ListCorporaRequest,
        context: grpc.aio.ServicerContext[pb.ListCorporaRequest, pb.ListCorporaResponse],
    ) -> pb.ListCorporaResponse:
        async with self._rpc("ListCorpora", context):
            return convert.corpora_response(await self._pipeline.list_corpora())
        raise AssertionError("unreachable: _rpc re-raises or aborts")
