"""A checked REST call written out in another style: ``curl`` or Python ``requests``.

``write_call`` generates a call in the model's own format (its "native" style); an agent that
wants to paste a shell command or a Python line asks for ``curl`` or ``requests``. The call is
rewritten from what the parser read (method, path, query and body arguments), never generated
again, so the verdict on it still holds. Pure: no I/O.
"""

from __future__ import annotations

import json
import shlex

from apihelper.service.answers.parse import Argument, ArgWhere, CallStyle, ParsedCall

STYLES = ("native", "curl", "requests")
# Where the caller's API is served, for the agent to fill in: the placeholder the checker reads as
# "the API's own server" (apihelper.service.answers.parse), so a rewritten call checks the same.
BASE_URL = "{BASE_URL}"


def render(call: ParsedCall, style: str) -> str | None:
    """``call`` in ``style``, or None when it cannot be written so (not a REST call)."""
    if style == "native":
        return call.raw
    if call.style is not CallStyle.REST or not call.method or not call.path:
        return None
    url = (f"https://{call.host}" if call.host else BASE_URL) + call.path
    query = _fields(call.args, ArgWhere.QUERY)
    body = _fields(call.args, ArgWhere.BODY)
    return _curl(call.method, url, query, body) if style == "curl" else _requests(call.method, url, query, body)


def _fields(args: tuple[Argument, ...], where: ArgWhere) -> list[Argument] | Argument | None:
    """The named arguments at ``where``, the one opaque whole (``json=payload``), or None."""
    chosen = [a for a in args if a.where is where]
    if not chosen:
        return None
    if len(chosen) == 1 and not chosen[0].name:
        return chosen[0]
    return [a for a in chosen if a.name]


def _curl(
    method: str, url: str, query: list[Argument] | Argument | None, body: list[Argument] | Argument | None
) -> str:
    parts = ["curl"] if method == "GET" else ["curl", "-X", method]
    if isinstance(query, list):
        parts.append("-G")
        for arg in query:
            parts += ["--data-urlencode", shlex.quote(f"{arg.name}={_text(arg)}")]
    elif query is not None:
        url = f"{url}?{_text(query)}"
    parts.append(shlex.quote(url))
    if body is not None:
        if isinstance(body, list):
            text = json.dumps({a.name: (a.value if a.literal else a.source) for a in body}, ensure_ascii=False)
        else:
            text = json.dumps(body.value, ensure_ascii=False) if body.literal else body.source
        parts += ["-H", shlex.quote("Content-Type: application/json"), "-d", shlex.quote(text)]
    return " ".join(parts)


def _requests(
    method: str, url: str, query: list[Argument] | Argument | None, body: list[Argument] | Argument | None
) -> str:
    args = [f'f"{url}"' if url.startswith(BASE_URL) else repr(url)]
    if query is not None:
        args.append(f"params={_python(query)}")
    if body is not None:
        args.append(f"json={_python(body)}")
    return f"requests.{method.lower()}({', '.join(args)})"


def _python(value: list[Argument] | Argument) -> str:
    """Python source for the arguments: a literal by its value, anything else as written."""
    if isinstance(value, Argument):
        return repr(value.value) if value.literal else value.source
    return "{" + ", ".join(f"{a.name!r}: {repr(a.value) if a.literal else a.source}" for a in value) + "}"


def _text(arg: Argument) -> str:
    """A value as text on a command line: a string as it is, other literals as JSON."""
    if not arg.literal:
        return arg.source
    return arg.value if isinstance(arg.value, str) else json.dumps(arg.value)
