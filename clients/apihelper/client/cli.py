"""apihelper-client: the streaming client sample.

    apihelper-client ask "Create a new session"      # sources, streamed answer, parsed call, timings
    apihelper-client search "list folders" --corpus rest
    apihelper-client corpora
    apihelper-client health --wait 60

Async (grpc.aio) throughout; tokens are printed as they arrive. TLS with --tls / --ca-cert.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apihelper.grpc_status import error_from_status
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

_MODES = {
    "hybrid": pb.RETRIEVAL_MODE_HYBRID,
    "dense": pb.RETRIEVAL_MODE_DENSE,
    "keyword": pb.RETRIEVAL_MODE_KEYWORD,
    "none": pb.RETRIEVAL_MODE_NONE,
}
_FORMATS = {
    "auto": pb.PROMPT_FORMAT_UNSPECIFIED,
    "gorilla_v0": pb.PROMPT_FORMAT_GORILLA_V0,
    "openfunctions_v2": pb.PROMPT_FORMAT_OPENFUNCTIONS_V2,
    "chat_tools": pb.PROMPT_FORMAT_CHAT_TOOLS,
}


def make_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    if not (args.tls or args.ca_cert):
        return grpc.aio.insecure_channel(args.address)
    root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    key = Path(args.client_key).read_bytes() if args.client_key else None
    chain = Path(args.client_cert).read_bytes() if args.client_cert else None
    return grpc.aio.secure_channel(args.address, grpc.ssl_channel_credentials(root, key, chain))


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def retrieval_options(args: argparse.Namespace) -> pb.RetrievalOptions:
    options = pb.RetrievalOptions(corpora=args.corpus or [], mode=_MODES[args.mode])
    if args.top_k is not None:
        options.top_k = args.top_k
    return options


async def ask(channel: grpc.aio.Channel, args: argparse.Namespace, out: TextIO) -> int:
    sampling = pb.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, stop=args.stop or [])
    if args.seed is not None:
        sampling.seed = args.seed
    request = pb.GenerateRequest(
        instruction=args.instruction,
        retrieval=retrieval_options(args),
        sampling=sampling,
        prompt_format=_FORMATS[args.format],
        suppress_repeated_lines=not args.keep_repeats,
    )
    if args.constrain_calls != "auto":
        request.constrain_calls = args.constrain_calls == "on"
    stub = pb_grpc.ApiHelperStub(channel)
    deltas = 0
    started = time.perf_counter()
    async for message in stub.Generate(request, timeout=args.timeout, metadata=call_metadata(args)):
        event = message.WhichOneof("event")
        if event == "sources":
            print_sources(message.sources.sources, out)
            out.write("\nAnswer (streamed as generated):\n")
        elif event == "delta":
            deltas += 1
            out.write(message.delta.text)
        elif event == "completion":
            print_completion(message.completion, deltas, time.perf_counter() - started, out)
        out.flush()
    return 0


def print_sources(sources: Sequence[pb.Source], out: TextIO) -> None:
    out.write(f"Sources ({len(sources)}):\n")
    for i, s in enumerate(sources, 1):
        out.write(f"  {i}. [{s.corpus}] {s.key}  (score {s.score:.4f})  {s.title}\n")


class _Colors:
    """ANSI colours on a terminal, plain text elsewhere (pipes, files, tests)."""

    def __init__(self, out: TextIO) -> None:
        self._on = out.isatty()

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self._on else text

    def green(self, text: str) -> str:
        return self._paint("32", text)

    def red(self, text: str) -> str:
        return self._paint("31", text)


def print_completion(c: pb.Completion, deltas: int, wall_seconds: float, out: TextIO) -> None:
    t = c.timings
    finish = pb.FinishReason.Name(c.finish_reason).removeprefix("FINISH_REASON_").lower()
    out.write("\n\n--- completion ---\n")
    out.write(
        f"finish: {finish}   tokens: prompt {c.usage.prompt_tokens}, completion "
        f"{c.usage.completion_tokens}   streamed in {deltas} deltas   model: {c.model}"
        f"{'   calls constrained to the docs' if c.calls_constrained else ''}\n"
    )
    color = _Colors(out)
    verdict = pb.Verdict.Name(c.verdict).removeprefix("VERDICT_").lower()
    for call in c.api_calls:
        call_verdict = pb.Verdict.Name(call.verdict).removeprefix("VERDICT_").lower()
        paint = color.green if call.verdict == pb.VERDICT_VALID else color.red
        where = f" -> {call.matched_key}" if call.matched_key else ""
        out.write(f"api call: {paint(call_verdict)}  {call.name or call.raw}{where}\n")
        for reason in call.reasons:
            out.write(f"    - {reason}\n")
        if call.suggestion:
            out.write(f"    did you mean {call.suggestion}?\n")
    if not c.api_calls:
        out.write(f"api call: {color.red(verdict)}  none could be read from the answer\n")
    if c.suppressed_lines:
        out.write(f"suppressed {c.suppressed_lines} repeated line(s)\n")
    generation_ms = max(t.total_ms - t.first_token_ms, 1e-3)
    rate = (max(c.usage.completion_tokens - 1, 0)) / (generation_ms / 1000.0)
    out.write(
        f"timing: retrieval {t.retrieval_ms:.1f} ms (embed {t.embed_ms:.1f}, search {t.search_ms:.1f}) | "
        f"queue {t.queue_ms:.1f} ms | first token {t.first_token_ms:.1f} ms | {rate:.1f} tokens/s | "
        f"total {t.total_ms:.1f} ms (client {wall_seconds * 1000:.0f} ms)\n"
    )


async def search(channel: grpc.aio.Channel, args: argparse.Namespace, out: TextIO) -> int:
    stub = pb_grpc.ApiHelperStub(channel)
    response = await stub.Retrieve(
        pb.RetrieveRequest(instruction=args.instruction, retrieval=retrieval_options(args)),
        timeout=args.timeout,
        metadata=call_metadata(args),
    )
    print_sources(response.sources, out)
    out.write(f"retrieval {response.timings.retrieval_ms:.1f} ms\n")
    return 0


async def corpora(channel: grpc.aio.Channel, args: argparse.Namespace, out: TextIO) -> int:
    response = await pb_grpc.ApiHelperStub(channel).ListCorpora(
        pb.ListCorporaRequest(), timeout=args.timeout, metadata=call_metadata(args)
    )
    for c in response.corpora:
        when = c.last_ingest.ToDatetime().isoformat() + "Z" if c.HasField("last_ingest") else "never"
        out.write(f"{c.name}\t{c.format}\t{c.doc_count} docs\t{c.embedding_model}\tingested {when}\t{c.source}\n")
    return 0


async def health_check(channel: grpc.aio.Channel, args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0 when SERVING; with --wait, poll until then or the time is up."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + args.wait
    status = "UNKNOWN"
    while True:
        try:
            # types-grpcio-health-checking's HealthStub declares no methods.
            check = stub.Check  # type: ignore[attr-defined]
            response = await check(health_pb2.HealthCheckRequest(service=args.service), timeout=2.0)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.aio.AioRpcError as exc:
            status = f"unreachable ({exc.code().name})"
        if status == "SERVING" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    out.write(f"{status}\n")
    return 0 if status == "SERVING" else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apihelper-client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=os.environ.get("APIHELPER_ADDRESS", "localhost:50051"),
        help="host:port of apihelper-serve (default: $APIHELPER_ADDRESS, else localhost:50051)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument("--ca-cert", help="PEM root certificate(s) to trust (implies --tls)")
    parser.add_argument("--client-cert", help="PEM client certificate for mutual TLS")
    parser.add_argument("--client-key", help="PEM client key for mutual TLS")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("APIHELPER_TIMEOUT", "300")),
        help="deadline per call, seconds (default: $APIHELPER_TIMEOUT, else 300)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("APIHELPER_TOKEN"), help="bearer token (default: $APIHELPER_TOKEN)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_retrieval(p: argparse.ArgumentParser) -> None:
        p.add_argument("instruction")
        p.add_argument("--corpus", action="append", help="corpus to search (repeatable; default all)")
        p.add_argument("--top-k", type=int, help="docs to retrieve (default: the server's)")
        p.add_argument("--mode", choices=sorted(_MODES), default="hybrid")

    p_ask = sub.add_parser("ask", help="stream an answer with its sources")
    add_retrieval(p_ask)
    p_ask.add_argument("--max-tokens", type=int, default=64)
    p_ask.add_argument("--temperature", type=float, default=0.0)
    p_ask.add_argument("--seed", type=int)
    p_ask.add_argument("--stop", action="append")
    p_ask.add_argument("--format", choices=sorted(_FORMATS), default="auto")
    p_ask.add_argument("--keep-repeats", action="store_true", help="do not suppress lines the model repeats verbatim")
    p_ask.add_argument(
        "--constrain-calls",
        choices=("auto", "on", "off"),
        default="auto",
        help="only calls to real APIs of the docs (auto: where the server's engine can)",
    )
    add_retrieval(sub.add_parser("search", help="retrieve docs only"))
    sub.add_parser("corpora", help="list the corpora")
    p_health = sub.add_parser("health", help="check grpc.health.v1")
    p_health.add_argument("--service", default="")
    p_health.add_argument("--wait", type=float, default=0.0, help="poll up to this many seconds")
    return parser


_COMMANDS = {"ask": ask, "search": search, "corpora": corpora, "health": health_check}


async def run(args: argparse.Namespace, out: TextIO) -> int:
    async with make_channel(args) as channel:
        try:
            return await _COMMANDS[args.command](channel, args, out)
        except grpc.aio.AioRpcError as exc:
            error = error_from_status(exc.code(), exc.details() or "")
            print(f"\napihelper-client: {exc.code().name} ({type(error).__name__}): {error}", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    raise SystemExit(asyncio.run(run(args, sys.stdout)))


if __name__ == "__main__":
    main()
