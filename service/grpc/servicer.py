"""The ApiHelper servicer: protobuf in, pipeline call, protobuf out. Nothing else.

Validation and conversion live in ``convert``; status mapping in ``status`` (errors that are
not ``ApiHelperError`` are bugs: logged there and sent as INTERNAL without details). A client that goes
away or whose deadline passes cancels the handler task; the ``CancelledError`` is never caught
here, so it reaches the engine stream, which aborts the engine request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from service.grpc import convert, status
from service.pipeline import Pipeline


class ApiHelperServicer(pb_grpc.ApiHelperServicer):
    def __init__(self, pipeline: Pipeline, limits: convert.RequestLimits) -> None:
        self._pipeline = pipeline
        self._limits = limits

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse]
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            params = convert.generate_params(request, self._limits)
            async for event in self._pipeline.generate(params):
                yield convert.generate_response(event)
        except Exception as exc:  # noqa: BLE001 - status.abort maps it; CancelledError passes
            await status.abort(context, exc)

    async def Retrieve(
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext[pb.RetrieveRequest, pb.RetrieveResponse]
    ) -> pb.RetrieveResponse:
        try:
            params = convert.retrieve_params(request, self._limits)
            return convert.retrieve_response(await self._pipeline.retrieve(params))
        except Exception as exc:  # noqa: BLE001 - status.abort maps it; CancelledError passes
            await status.abort(context, exc)

    async def ListCorpora(
        self,
        request: pb.ListCorporaRequest,
        context: grpc.aio.ServicerContext[pb.ListCorporaRequest, pb.ListCorporaResponse],
    ) -> pb.ListCorporaResponse:
        try:
            return convert.corpora_response(await self._pipeline.list_corpora())
        except Exception as exc:  # noqa: BLE001 - status.abort maps it; CancelledError passes
            await status.abort(context, exc)
