"""The one place where apihelper errors become gRPC status codes.

Servicer methods catch ``ApiHelperError`` and call :func:`abort`; anything else is a bug,
logged with its traceback and reported as INTERNAL without details.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from service.errors import (
    ApiHelperError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    ResourceExhaustedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

_CODES: list[tuple[type[ApiHelperError], grpc.StatusCode]] = [
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


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
        log.exception("internal error", exc_info=exc)
        await context.abort(code, "internal error")
    await context.abort(code, details(exc))
    raise AssertionError("context.abort returned")  # it always raises
