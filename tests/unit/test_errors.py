"""The error tree on gRPC, both ways: what the server sends is what the client gets back."""

from __future__ import annotations

import grpc
import pytest

from apihelper.errors import (
    INTERNAL,
    OUTCOMES,
    ApiHelperError,
    ConfigurationError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    MissingDependencyError,
    ResourceExhaustedError,
    RetrieverUnavailableError,
    UnauthenticatedError,
    UnavailableError,
    UnknownCorpusError,
    outcome_of,
)
from apihelper.grpc_status import CODES, error_from_status, status_code


@pytest.mark.parametrize(
    ("error", "code", "comes_back_as"),
    [
        (
            InvalidRequestError("sampling.top_p", "must be in (0, 1]"),
            grpc.StatusCode.INVALID_ARGUMENT,
            InvalidRequestError,
        ),
        (UnknownCorpusError("nope"), grpc.StatusCode.NOT_FOUND, UnknownCorpusError),
        (UnauthenticatedError("missing bearer token"), grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (ResourceExhaustedError("64 streams"), grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (DeadlineExceededError("300 s"), grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (RetrieverUnavailableError("Milvus down"), grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (EngineUnavailableError("executor died"), grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (MissingDependencyError("x", "y", "z"), grpc.StatusCode.FAILED_PRECONDITION, ConfigurationError),
        (ValueError("a bug"), grpc.StatusCode.INTERNAL, ApiHelperError),
    ],
)
def test_status_codes_round_trip(error: Exception, code: grpc.StatusCode, comes_back_as: type[ApiHelperError]) -> None:
    assert status_code(error) is code
    back = error_from_status(code, str(error))
    assert type(back) is comes_back_as
    if isinstance(error, ApiHelperError):
        assert str(back) == str(error)


def test_the_field_of_a_bad_request_survives_the_wire() -> None:
    back = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, str(InvalidRequestError("retrieval.top_k", "too big")))
    assert isinstance(back, InvalidRequestError)
    assert back.field == "retrieval.top_k"
    corpus = error_from_status(grpc.StatusCode.NOT_FOUND, str(UnknownCorpusError("nope")))
    assert isinstance(corpus, UnknownCorpusError) and corpus.field == "retrieval.corpora" and corpus.corpus == "nope"
    odd = error_from_status(grpc.StatusCode.NOT_FOUND, "something else")
    assert isinstance(odd, UnknownCorpusError) and str(odd) == "something else" and odd.field == ""
    unnamed = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "the request is bad: somehow")
    assert isinstance(unnamed, InvalidRequestError)
    assert unnamed.field == "" and str(unnamed) == "the request is bad: somehow"


def test_every_outcome_row_is_reachable() -> None:
    classes = [cls for cls, _ in OUTCOMES]
    for i, cls in enumerate(classes):  # no row is shadowed by a more general one above it
        assert not any(issubclass(cls, earlier) for earlier in classes[:i])
    assert outcome_of(UnknownCorpusError("x")) == "NOT_FOUND"
    assert outcome_of(RetrieverUnavailableError("down")) == "UNAVAILABLE"
    assert outcome_of(ValueError("a bug")) == INTERNAL


def test_every_mapped_class_is_an_apihelper_error() -> None:
    assert all(issubclass(cls, ApiHelperError) for cls, _ in CODES)
    assert len({code for _, code in CODES}) == len(CODES)  # one class per code: the way back is unique


def test_an_unknown_corpus_names_only_itself() -> None:
    # The message a caller gets names the corpus asked for, not the ones it may not know of, and
    # only the head of a long name.
    error = UnknownCorpusError("x" * 10_000)
    assert str(error).startswith("retrieval.corpora: unknown corpus 'xxx")
    assert len(str(error)) < 200 and "known" not in str(error).replace("unknown", "")
