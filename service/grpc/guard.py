"""Calls that end before a servicer runs: counted, and answered with a plain status.

grpc itself answers an unknown method (UNIMPLEMENTED) and a request that does not deserialize
(UNKNOWN, with the exception's class in the details and a traceback in the log); neither reaches
a servicer, so neither would be counted. :class:`CallGuard`, the interceptor next to the
servicers (inside the token check, so a client without the token is refused whatever its bytes),
closes both gaps:

- an unknown method is counted as ``rpc="unknown"`` (one label value whatever the path: a
  scanner cannot grow the series), then grpc answers UNIMPLEMENTED;
- every unary-request handler's deserializer is wrapped: bytes that are not the method's
  message become a marker, and the call ends with INVALID_ARGUMENT ("the request is not a valid
  <Message> message"), one log line, and a count, before any other code sees it;
- streamed-request handlers (server reflection) are counted, and a request of theirs that does
  not decode ends the call with INVALID_ARGUMENT the same way.

The bearer-token interceptor (``auth``) counts its own refusals (UNAUTHENTICATED). What gRPC's
core refuses before Python sees the call (a message over ``max_message_bytes``, oversized
metadata) cannot be counted here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from apihelper.service.calls import CallPolicy

log = logging.getLogger(__name__)

UNKNOWN_RPC = "unknown"


def rpc_label(method: str) -> str:
    """The ``rpc`` label of a full method name: its last part (``/pkg.Service/Generate`` ->
    ``Generate``)."""
    return method.rsplit("/", 1)[-1] or UNKNOWN_RPC


class _Undecodable:
    """What a guarded deserializer returns for bytes that are not the expected message."""

    __slots__ = ()


UNDECODABLE = _Undecodable()


class CallGuard(grpc.aio.ServerInterceptor):
    def __init__(self, calls: CallPolicy) -> None:
        self._calls = calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            self._calls.refused(UNKNOWN_RPC, grpc.StatusCode.UNIMPLEMENTED.name)
            return None
        rpc = rpc_label(handler_call_details.method)
        if handler.request_streaming:
            return _counted_stream(handler, rpc, self._calls)
        if handler.request_deserializer is None:
            return handler
        return _guarded(handler, rpc, self._calls)


def _counted_stream(
    handler: grpc.RpcMethodHandler[Any, Any], rpc: str, calls: CallPolicy
) -> grpc.RpcMethodHandler[Any, Any]:
    """A bidirectional handler (server reflection) counted like every RPC. Its requests are read
    by grpc as the handler asks for them; one that does not decode fails the call."""
    behaviour: Any = handler.stream_stream
    if behaviour is None or not handler.response_streaming:
        return handler  # client streaming with one reply: none is served

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        count = calls.start(rpc)
        code = grpc.StatusCode.OK
        try:
            result = behaviour(requests, context)
            if inspect.isasyncgen(result):
                async for message in result:
                    await context.write(message)
            elif inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except DecodeError:  # a streamed request that is not the method's message
            code = grpc.StatusCode.INVALID_ARGUMENT
            log.info("%s: a request did not decode (%s)", rpc, context.peer())
            count.finish(code.name)
            await context.abort(code, "a request is not a valid message of this method")
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN  # a bug in the handler: grpc logs it and says UNKNOWN
            raise
        finally:
            count.finish(code.name)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _guarded(handler: grpc.RpcMethodHandler[Any, Any], rpc: str, calls: CallPolicy) -> grpc.RpcMethodHandler[Any, Any]:
    parse = handler.request_deserializer
    assert parse is not None
    expected = getattr(getattr(parse, "__self__", None), "__name__", "message")

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, or whatever a deserializer raises for bad bytes
            return UNDECODABLE

    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        log.info("%s: the request did not decode as %s (%s)", rpc, expected, context.peer())
        calls.refused(rpc, grpc.StatusCode.INVALID_ARGUMENT.name)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {expected} message")

    if handler.response_streaming:
        behaviour: Any = handler.unary_stream
        assert behaviour is not None

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if request is UNDECODABLE:
                await refuse(context)
                return
            result = behaviour(request, context)
            if inspect.isasyncgen(result):  # a handler that yields: write what it yields
                async for message in result:
                    await context.write(message)
            elif inspect.isawaitable(result):
                await result

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )

    unary: Any = handler.unary_unary
    assert unary is not None

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is UNDECODABLE:
            await refuse(context)
            return None
        result = unary(request, context)
        return await result if inspect.isawaitable(result) else result

    return grpc.unary_unary_rpc_method_handler(
        unary_unary, request_deserializer=deserialize, response_serializer=handler.response_serializer
    )
