"""Ending a call with the status its error maps to (the table itself: ``apihelper.grpc_status``).

Servicer methods call :func:`abort` with what they caught; anything that is not an
``ApiHelperError`` is a bug, reported as INTERNAL without details (the call policy,
``apihelper.service.calls``, has logged it with its traceback).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from apihelper.grpc_status import status_code

# Messages may quote request values (an unknown corpus name, say). gRPC carries them as
# percent-encoded trailers and a client refuses trailers over 8 KiB, turning the real status into
# RESOURCE_EXHAUSTED; 400 characters stay under that even at 12 bytes per encoded character.
MAX_DETAILS_CHARS = 400


def details(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 1] + "…"


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the RPC with the status ``exc`` maps to."""
    code = status_code(exc)
    if code is grpc.StatusCode.INTERNAL:
        await context.abort(code, "internal error")
    await context.abort(code, details(exc))
    raise AssertionError("context.abort returned")  # it always raises
