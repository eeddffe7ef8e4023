"""Optional bearer-token authentication for the gRPC server, as an interceptor.

Clients send ``authorization: Bearer <token>`` metadata. The comparison is constant-time
(``hmac.compare_digest``). Health checks stay open so load balancers need no secret. A refused
call ends with UNAUTHENTICATED before any handler runs (counted in ``apihelper_requests_total``,
so a brute force shows), and the token never reaches a log.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from apihelper.service.calls import CallPolicy
from apihelper.service.grpc.guard import rpc_label

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, calls: CallPolicy, open_methods: frozenset[str] = OPEN_METHODS) -> None:
        if not token:
            raise ValueError("an empty token would let everyone in")
        self._expected = f"Bearer {token}".encode()
        self._open = open_methods
        self._calls = calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._open:
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusing(handler, rpc_label(handler_call_details.method), self._calls)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False


def _refusing(handler: grpc.RpcMethodHandler[Any, Any], rpc: str, calls: CallPolicy) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        calls.refused(rpc, grpc.StatusCode.UNAUTHENTICATED.name)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
