"""The ApiHelper servicer: protobuf in, pipeline call, protobuf out. Nothing else.

Validation and conversion live in ``convert``; status mapping in ``status`` (errors that are
not ``ApiHelperError`` are bugs: logged there and sent as INTERNAL without details). A client
that goes away or whose deadline passes cancels the handler task; the ``CancelledError`` is
re-raised here, after being counted, so it reaches the engine stream, which aborts the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from apihelper.errors import DeadlineExceededError
from apihelper.grpc_status import status_code
from apihelper.service.core import Core
from apihelper.service.grpc import convert, status
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc


class ApiHelperServicer(pb_grpc.ApiHelperServicer):
    """The RPCs over the core every front end shares: its pipeline, limits, stream limit,
    default deadline, recorder and health (re-checked at once when a call meets UNAVAILABLE)."""

    def __init__(self, core: Core) -> None:
        self._pipeline = core.pipeline
        self._limits = core.limits
        self._recorder = core.recorder
        self._streams = core.streams
        self._default_deadline = core.default_deadline_seconds
        self._on_unavailable = core.health.recheck_soon

    @contextlib.asynccontextmanager
    async def _rpc(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Record the RPC's outcome and turn errors into a status (mid-stream ones too)."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._recorder.rpc_started(name)
        # A call without a deadline gets the server's, so nothing can hold a stream forever.
        remaining = context.time_remaining()
        own_deadline = self._default_deadline if remaining is None else None
        try:
            async with asyncio.timeout(own_deadline):
                yield
        except TimeoutError:
            exc = DeadlineExceededError(f"no deadline was set and the server's {self._default_deadline:g} s passed")
            code = status_code(exc)
            await status.abort(context, exc)
        except asyncio.CancelledError:
            # The client went away or its deadline passed: let cancellation reach the engine.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # status.abort maps it; CancelledError passes
            code = status_code(exc)
            if code is grpc.StatusCode.UNAVAILABLE:
                self._on_unavailable()
            await status.abort(context, exc)
        finally:
            self._recorder.rpc_finished(name, code.name, time.perf_counter() - started)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse]
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with self._rpc("Generate", context):
            with self._streams.admit():  # over the limit: RESOURCE_EXHAUSTED at once
                params = convert.generate_params(request, self._limits)
                async with contextlib.aclosing(self._pipeline.generate(params)) as events:
                    async for event in events:
                        yield convert.generate_response(event)

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
