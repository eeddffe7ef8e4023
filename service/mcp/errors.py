"""apihelper's errors on MCP: the one table between the error tree and what a tool call returns.

A tool that fails returns an MCP tool error (``isError: true``) whose text starts with the
outcome's name in the vocabulary the metrics use for every protocol (``apihelper.errors.outcome_of``:
gRPC's status names), then the message: an agent reads
``INVALID_ARGUMENT: top_k: must be between 1 and 50, got 99`` and knows what to change. A bad
argument names the tool's own argument (``corpora``, not the pipeline's ``retrieval.corpora``).
Anything the table does not name is a bug: ``INTERNAL: internal error``, no details. A request
the HTTP front end refuses before MCP sees it (no token) gets the same text as a JSON-RPC error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.types import INVALID_REQUEST

from apihelper.errors import INTERNAL, InvalidRequestError, outcome_of

MAX_MESSAGE_CHARS = 400


def error_text(exc: BaseException, arguments: Mapping[str, str] = {}) -> str:
    """The text of the tool error for ``exc``. ``arguments`` renames the pipeline's field names
    to the tool's argument names (``retrieval.corpora`` -> ``corpora``)."""
    code = outcome_of(exc)
    if code == INTERNAL:
        return f"{INTERNAL}: internal error"
    if isinstance(exc, InvalidRequestError) and exc.field:
        message = f"{arguments.get(exc.field, exc.field)}: {exc.message}"
    else:
        message = str(exc)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return f"{code}: {message}"


def refusal(exc: BaseException) -> dict[str, Any]:
    """The JSON body of an HTTP refusal of ``/mcp`` before MCP saw the request (a missing token):
    a JSON-RPC error, which MCP clients show as the call's error, with :func:`error_text`'s text."""
    return {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": error_text(exc)}}
