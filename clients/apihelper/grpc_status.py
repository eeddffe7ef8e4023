"""apihelper's errors on gRPC: the one table between the error tree and status codes, both ways.

The server ends a call whose handler raised an :class:`~apihelper.errors.ApiHelperError` with the
code :func:`status_code` gives (``apihelper.service.grpc.status`` does the aborting); a client
turns a failed call back into the same class with :func:`error_from_status`. Anything the table
does not name is INTERNAL on the way out and a plain :class:`~apihelper.errors.ApiHelperError` on
the way back.
"""

from __future__ import annotations

import grpc

from apihelper.errors import (
    ApiHelperError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnknownCorpusError,
)

# Most specific first: the first class an error is an instance of decides its code.
CODES: tuple[tuple[type[ApiHelperError], grpc.StatusCode], ...] = (
    (UnknownCorpusError, grpc.StatusCode.NOT_FOUND),  # before its base class: the first match wins
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The status a call that failed with ``exc`` ends with (INTERNAL for what is not ours)."""
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_from_status(code: grpc.StatusCode, details: str) -> ApiHelperError:
    """The error a client sees for a call that ended with ``code`` and ``details``."""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError.from_message(details)
    if code is grpc.StatusCode.NOT_FOUND:
        return UnknownCorpusError.from_details(details)
    for cls, mapped in CODES:
        if mapped is code and cls not in (InvalidRequestError, UnknownCorpusError):
            return cls(details)
    return ApiHelperError(f"{code.name}: {details}" if details else code.name)
