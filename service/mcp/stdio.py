"""``apihelper-mcp``: the MCP server over stdio, for agents that start servers as subprocesses.

A thin process: it holds no model, no index and no tool of its own. It speaks MCP on its stdin
and stdout and forwards every request (tools/list, tools/call, resources) to a running
apihelper service's streamable-HTTP endpoint (``/mcp`` on its HTTP port), so the tools, their
schemas, the limits, the deadline, the bearer token, the metrics and the drain are the service's
own, and the token budgets of ``search_apis`` are counted with the served model's tokenizer,
which only the service has. Errors come back as the service sent them.

    apihelper-mcp --target 127.0.0.1:8000             # http://127.0.0.1:8000/mcp
    apihelper-mcp --target https://apihelper.example  # TLS; /mcp appended
    APIHELPER_AUTH_TOKEN=... apihelper-mcp --target ...   # or --auth-token-file FILE
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from apihelper.errors import ConfigurationError
from apihelper.service.settings import read_token_file

TOKEN_ENV = "APIHELPER_AUTH_TOKEN"
# Connect, write and pool within 30 s; a tool call (write_call generates) may take the service's
# maximum deadline to answer.
TIMEOUT = httpx2.Timeout(30.0, read=660.0)

log = logging.getLogger("apihelper.mcp")


def endpoint(target: str) -> str:
    """The /mcp URL of ``target``: ``HOST:PORT`` (plain HTTP) or an http(s) URL."""
    url = target if "://" in target else f"http://{target}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"--target: {target!r} is neither HOST:PORT nor an http(s) URL")
    path = parts.path.rstrip("/")
    return url if path.endswith("/mcp") else f"{parts.scheme}://{parts.netloc}{path}/mcp"


@contextlib.asynccontextmanager
async def remote(url: str, token: str = "") -> AsyncIterator[Client]:
    """An MCP client session to the service's streamable-HTTP endpoint, with the bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT) as http,
        Client(streamable_http_client(url, http_client=http, terminate_on_close=False)) as client,
    ):
        yield client


def forwarder(client: Client) -> Server[Any]:
    """A server whose every handler asks ``client`` (the running service) and returns its answer."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await client.list_tools(cursor=params.cursor if params else None)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await client.call_tool(params.name, params.arguments or {})
        assert isinstance(result, types.CallToolResult)
        return result

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await client.list_resources(cursor=params.cursor if params else None)

    async def list_templates(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await client.list_resource_templates(cursor=params.cursor if params else None)

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        result = await client.read_resource(params.uri)
        assert isinstance(result, types.ReadResourceResult)
        return result

    return Server(
        "apihelper",
        instructions="apihelper's tools, forwarded to a running apihelper service.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(url: str, token: str) -> None:
    async with remote(url, token) as client, stdio_server() as (read, write):
        server = forwarder(client)
        await server.run(read, write, server.create_initialization_options())


def _token(args: argparse.Namespace) -> str:
    if args.auth_token_file is None:
        return os.environ.get(TOKEN_ENV, "")
    return read_token_file(args.auth_token_file, "--auth-token-file")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="apihelper-mcp",
        description="apihelper's MCP tools over stdio, forwarded to a running service's /mcp endpoint.",
        epilog=f"The bearer token: --auth-token-file, or the {TOKEN_ENV} variable.",
    )
    parser.add_argument("--target", required=True, help="the service's HTTP address: HOST:PORT or an http(s) URL")
    parser.add_argument("--auth-token-file", help="a file holding the service's bearer token")
    parser.add_argument("--log-level", default="WARNING", help="logged to stderr (stdout is the protocol)")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        url, token = endpoint(args.target), _token(args)
    except ConfigurationError as exc:
        print(f"apihelper-mcp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    failed: list[BaseException] = []
    try:
        anyio.run(serve_stdio, url, token)
    except* (httpx2.HTTPError, MCPError) as group:  # the service is not there, or refuses us
        failed.extend(_leaves(group))
    except* KeyboardInterrupt:
        pass
    if failed:
        print(f"apihelper-mcp: {url}: {failed[0]}", file=sys.stderr)
        raise SystemExit(1)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in ``group``, nested groups flattened."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    main()
