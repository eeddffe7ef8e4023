"""The one error hierarchy of apihelper, shared by every layer.

Every error the service, the retriever, the offline tools or the client raise on purpose derives
from :class:`ApiHelperError`. It sits at the floor of the package: every layer imports it, none
of it imports anything of apihelper. What a call that failed with each class ends with is named
once, here (``OUTCOMES``: gRPC's status names, the vocabulary the metrics count every protocol's
calls in); each protocol maps the *classes* below to its status codes in exactly one place (gRPC:
``apihelper.grpc_status``, both ways, so a client gets the same classes back; HTTP:
``apihelper.http_status``; MCP writes the outcome's name into a tool error:
``apihelper.service.mcp.errors``); nothing else decides what a client sees.

    ApiHelperError
    ├── InvalidRequestError        the request is wrong; names the offending ``field``
    │   ├── UnknownCorpusError     a corpus that is not ingested (gRPC NOT_FOUND, HTTP 404)
    │   └── RequestTooLargeError   a request body over the server's size limit (HTTP; gRPC's
    │                              transport refuses those itself)
    ├── UnauthenticatedError       no valid credentials (a client sees this; the server's
    │                              interceptor answers before any handler runs)
    ├── ResourceExhaustedError     a limit (concurrency, queue) is reached; retry later
    ├── DeadlineExceededError      the server's own deadline (for calls that set none) passed
    ├── UnavailableError           a dependency cannot serve right now; retry later
    │   ├── RetrieverUnavailableError   Milvus is down or unreachable
    │   └── EngineUnavailableError      the generation engine failed or is shutting down
    ├── ConfigurationError         bad settings or artifacts: at start-up, or for one request that
    │                              needs an artifact that does not fit (FAILED_PRECONDITION)
    │   └── MissingDependencyError an optional package (e.g. tensorrt_llm) is not installed
    └── CorpusLoadError            one input file could not be loaded (ingest goes on without it)

Messages are meant for the person calling: they say what is wrong and, where it helps, what to do.
They never contain prompt text or credentials.
"""

from __future__ import annotations


class ApiHelperError(Exception):
    """Base class of every error apihelper raises on purpose."""


class InvalidRequestError(ApiHelperError):
    """A request field has a value the service will not accept."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    @classmethod
    def from_message(cls, text: str) -> InvalidRequestError:
        """The error back from its ``str()``, as a client reads it off the wire."""
        field, sep, message = text.partition(": ")
        if sep and field and " " not in field:
            return cls(field, message)
        return cls("", text)


class UnknownCorpusError(InvalidRequestError):
    """A request names a corpus that has not been ingested."""

    # The message names the corpus asked for, never the others (ListCorpora lists those, to
    # callers that may see them), and only the head of a long name.
    MAX_NAME_CHARS = 80

    def __init__(self, corpus: str) -> None:
        shown = corpus if len(corpus) <= self.MAX_NAME_CHARS else corpus[: self.MAX_NAME_CHARS] + "..."
        super().__init__("retrieval.corpora", f"unknown corpus {shown!r}")
        self.corpus = corpus

    @classmethod
    def from_details(cls, text: str) -> UnknownCorpusError:
        """The error back from its ``str()``, as a client reads it off the wire (NOT_FOUND)."""
        prefix = "retrieval.corpora: unknown corpus "
        corpus = text[len(prefix) :] if text.startswith(prefix) else ""
        if len(corpus) >= 2 and corpus[0] == corpus[-1] and corpus[0] in "'\"":
            corpus = corpus[1:-1]  # repr() quotes it; escapes inside stay as sent
        error = cls(corpus)
        if str(error) != text:  # not in the shape this class writes: keep the details as they are
            error.field, error.message, error.args = "", text, (text,)
        return error


class RequestTooLargeError(InvalidRequestError):
    """A request body is larger than the server accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__("body", f"is over the limit of {limit} bytes")
        self.limit = limit


class UnsupportedMediaTypeError(InvalidRequestError):
    """A request body is not in the media type the route takes (HTTP: JSON only as application/json)."""

    def __init__(self, given: str) -> None:
        super().__init__("content-type", f"must be application/json, got {given[:80]!r}")


class UnauthenticatedError(ApiHelperError):
    """The call carries no credentials, or wrong ones."""


class ResourceExhaustedError(ApiHelperError):
    """A server limit is reached; the same request may succeed later."""


class DeadlineExceededError(ApiHelperError):
    """A call that set no deadline ran past the server's default one."""


class BodyTimeoutError(DeadlineExceededError):
    """A request body did not arrive within the server's body timeout (HTTP)."""


class UnavailableError(ApiHelperError):
    """A dependency of the service cannot serve right now."""


class RetrieverUnavailableError(UnavailableError):
    """The vector store (Milvus) is down, unreachable or failed a query."""


class EngineUnavailableError(UnavailableError):
    """The generation engine failed, is not started, or is shutting down."""


class ConfigurationError(ApiHelperError):
    """Settings or on-disk artifacts (model, engine, manifest, a corpus) are unusable.

    Mostly found at start-up, which then fails. A request meets one only when it needs an
    artifact that does not fit the running service (a dense search of a corpus embedded with
    another model): gRPC FAILED_PRECONDITION, HTTP 400; retrying does not help, re-ingesting or
    another retrieval mode does."""


class MissingDependencyError(ConfigurationError):
    """An optional package needed by the selected component is not installed."""

    def __init__(self, package: str, needed_for: str, how: str) -> None:
        super().__init__(f"{needed_for} needs the '{package}' package, which is not installed: {how}")
        self.package = package


class CorpusLoadError(ApiHelperError):
    """One input file of a corpus could not be loaded."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


# ---------------------------------------------------------------------------------------------
# Outcomes

INTERNAL = "INTERNAL"  # anything not ours: a bug
INVALID_ARGUMENT = "INVALID_ARGUMENT"

# Most specific first: the first class an error is an instance of decides its outcome.
OUTCOMES: tuple[tuple[type[ApiHelperError], str], ...] = (
    (UnknownCorpusError, "NOT_FOUND"),  # before its base class
    (InvalidRequestError, INVALID_ARGUMENT),
    (UnauthenticatedError, "UNAUTHENTICATED"),
    (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
    (DeadlineExceededError, "DEADLINE_EXCEEDED"),
    (UnavailableError, "UNAVAILABLE"),
    (ConfigurationError, "FAILED_PRECONDITION"),
)


def outcome_of(exc: BaseException) -> str:
    """The outcome's name of a call that failed with ``exc`` (INTERNAL for what is not ours)."""
    for cls, name in OUTCOMES:
        if isinstance(exc, cls):
            return name
    return INTERNAL
