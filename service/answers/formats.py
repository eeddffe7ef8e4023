"""What each answer format looks like: the one description that the call grammar
(:mod:`apihelper.service.answers.grammar`, what a constrained model may write) and the parsers
(:mod:`apihelper.service.answers.parse` and :mod:`apihelper.service.answers.tool_calls`, what
is read back) are both written from. A marker, a section name or an HTTP method is spelled here
once; the two sides never spell it themselves, so they cannot drift apart (a round-trip test
walks every format's grammar and parses what it allows).

- ``gorilla_v0``: ``<<<field>>>: value`` sections (:data:`GORILLA_FIELDS`); the call is in the
  :data:`GORILLA_CALL_FIELD` section, either Python call syntax or a REST call: the text form
  ``METHOD /path?query {json body}`` (any of :data:`REST_METHODS`; the path ends at one of
  :data:`REST_TEXT_PATH_END`) or the requests form ``requests.<method>('<url>', params=..., json=...)``
  whose URL is a server of the API or :data:`BASE_URL_PLACEHOLDER` followed by the path.
- ``openfunctions_v2``: calls each after :data:`FUNCTION_MARK`.
- ``chat_tools``: JSON lists of ``{"name": ..., "arguments": {...}}`` between
  :data:`TOOL_CALL_OPEN` and :data:`TOOL_CALL_CLOSE`.
"""

from __future__ import annotations

from apihelper.retriever.doc_kinds import HTTP_METHODS
from apihelper.service.prompts import PromptFormat

GORILLA_FIELDS = ("domain", "api_call", "api_provider", "explanation", "code")
GORILLA_CALL_FIELD = "api_call"
GORILLA_PROSE_FIELD = "domain"  # the one section a constrained answer may write before the call
# Sections a constrained answer may write after the call (the first of them opens the tail).
GORILLA_TAIL_FIELDS = GORILLA_FIELDS[GORILLA_FIELDS.index(GORILLA_CALL_FIELD) + 1 :]
GORILLA_MARK_OPEN = "<<<"
GORILLA_MARK_CLOSE = ">>>:"
FUNCTION_MARK = "<<function>>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# REST calls: every method a spec can name can be written and is read back.
REST_METHODS: tuple[str, ...] = HTTP_METHODS
# Characters that end a path in the text form (``POST /sessions {...}``): whitespace, quotes, a
# backtick, ",", ";" and ")"; a path holding one cannot be written in that form.
REST_TEXT_PATH_END = "\\s'\"`,;)"
REQUESTS_MODULE = "requests"  # the requests form: ``requests.post(url, json=...)``
REQUESTS_QUERY_KEYWORD = "params"
REQUESTS_BODY_KEYWORD = "json"
BASE_URL_PLACEHOLDER = "{BASE_URL}"  # a requests-form URL's server when the spec names none


def gorilla_marker(field: str) -> str:
    """The marker that opens a gorilla_v0 section: ``<<<api_call>>>:``."""
    return f"{GORILLA_MARK_OPEN}{field}{GORILLA_MARK_CLOSE}"


# Text that opens or closes a call part in each format: doc text holding one cannot be written
# into a grammar (it would end the call early) and generated string values never start one.
MARKERS: dict[PromptFormat, tuple[str, ...]] = {
    PromptFormat.GORILLA_V0: (GORILLA_MARK_OPEN,),
    PromptFormat.OPENFUNCTIONS_V2: (FUNCTION_MARK,),
    PromptFormat.CHAT_TOOLS: (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
}
