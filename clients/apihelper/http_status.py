"""apihelper's errors on HTTP: the one table between the error tree and HTTP statuses.

The HTTP front end (``apihelper.service.http``) answers a request whose handler raised an
:class:`~apihelper.errors.ApiHelperError` with the status :func:`http_status` gives and the body
:func:`error_body` builds; anything the table does not name is a bug: 500, no details.

Each outcome also carries its name in the vocabulary the metrics use for every protocol
(``apihelper.errors.outcome_of``, gRPC's status names: ``apihelper_requests_total{code=
"INVALID_ARGUMENT"}`` counts bad requests whether they came over gRPC or HTTP), so dashboards need
no second set of queries.

Statuses follow Google's published mapping between gRPC codes and HTTP (INVALID_ARGUMENT and
FAILED_PRECONDITION 400, UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
DEADLINE_EXCEEDED 504, CANCELLED 499, NOT_FOUND 404: an unknown corpus), with 413 for a body over
the size limit, 415 for a body that is not ``application/json`` and 408 for one that did not
arrive within the body timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apihelper.errors import (
    ApiHelperError,
    BodyTimeoutError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    RequestTooLargeError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnknownCorpusError,
    UnsupportedMediaTypeError,
    outcome_of,
)


@dataclass(frozen=True)
class HttpOutcome:
    status: int  # the HTTP status
    code: str  # the outcome's name, as the metrics and the error body's "type" carry it


OK = HttpOutcome(200, "OK")
CANCELLED = HttpOutcome(499, "CANCELLED")  # the client went away (nginx's 499; nobody reads it)
INTERNAL = HttpOutcome(500, "INTERNAL")

# Most specific first: the first class an error is an instance of decides its status.
STATUSES: tuple[tuple[type[ApiHelperError], int], ...] = (
    (RequestTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (BodyTimeoutError, 408),
    (UnknownCorpusError, 404),
    (InvalidRequestError, 400),
    (UnauthenticatedError, 401),
    (ResourceExhaustedError, 429),
    (DeadlineExceededError, 504),
    (UnavailableError, 503),
    (ConfigurationError, 400),
)


def http_outcome(exc: BaseException) -> HttpOutcome:
    """What a request that failed with ``exc`` ends with (INTERNAL for what is not ours)."""
    for cls, status in STATUSES:
        if isinstance(exc, cls):
            return HttpOutcome(status, outcome_of(exc))
    return INTERNAL


def http_status(exc: BaseException) -> int:
    return http_outcome(exc).status


def error_body(exc: BaseException, *, max_chars: int = 400) -> dict[str, Any]:
    """The JSON body of an error response, in the shape OpenAI's API uses (so its clients read
    it): ``{"error": {"message", "type", "param", "code"}}``. ``param`` names the offending field
    of a bad request (``null`` otherwise); ``type`` is the outcome's name; ``code`` the status. An
    error that is not ours says only "internal error"."""
    outcome = http_outcome(exc)
    message = "internal error" if outcome == INTERNAL else str(exc)
    if len(message) > max_chars:
        message = message[: max_chars - 1] + "…"
    field = exc.field if isinstance(exc, InvalidRequestError) and exc.field else None
    return {"error": {"message": message, "type": outcome.code, "param": field, "code": outcome.status}}
