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
    OUTCOMES,
    ApiHelperError,
    InvalidRequestError,
    UnknownCorpusError,
    outcome_of,
)

# gRPC's codes are the outcomes' names (``apihelper.errors.OUTCOMES``).
CODES: tuple[tuple[type[ApiHelperError], grpc.StatusCode], ...] = tuple(
    (cls, grpc.StatusCode[name]) for cls, name in OUTCOMES
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The status a call that failed with ``exc`` ends with (INTERNAL for what is not ours)."""
    return grpc.StatusCode[outcome_of(exc)]


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
