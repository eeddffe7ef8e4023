"""``apihelper-build eval-retrieval``: score retrieval on a question file through the real retriever.

    apihelper-build eval-retrieval --milvus-uri data/milvus.db --corpus rest \\
        --questions dev_questions.jsonl [--k 10] [--mode hybrid|dense|keyword] [--ranked-out ranked.jsonl]

Prints one JSON object: top1, top5, mrr@10, domain_top1 (when the questions carry a domain,
as APIBench training lines do), latency p50/p99/mean in ms (query embedding included, measured
per query through ``MilvusRetriever``), doc_count and n. Question lines that name a ``corpus``
other than ``--corpus`` are skipped, so one file can hold several corpora's questions.
``--ranked-out`` writes ``{"id": ..., "ranked": [doc keys, best first]}`` per question.

The command is registered by :func:`add_eval_parser`, which the main parser calls; heavy
libraries are imported only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from apihelper.errors import UnknownCorpusError
from apihelper.retriever.types import RetrievalMode

EVAL_MODES = (RetrievalMode.HYBRID, RetrievalMode.DENSE, RetrievalMode.KEYWORD)


async def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Open the retriever, evaluate, write --ranked-out; returns the report as JSON data."""
    from apihelper.retriever.evaluate import evaluate, load_questions, write_ranked
    from apihelper.retriever.milvus_retriever import open_retriever

    questions = load_questions(args.questions, corpus=args.corpus)
    retriever = await open_retriever(args.milvus_uri, args.milvus_token or None)
    try:
        known = await retriever.corpus_names(refresh=True)
        if args.corpus not in known:
            raise UnknownCorpusError(args.corpus)
        report, ranked = await evaluate(
            retriever, questions, corpus=args.corpus, mode=RetrievalMode(args.mode), k=args.k
        )
    finally:
        await retriever.close()
    if args.ranked_out is not None:
        write_ranked(args.ranked_out, ranked)
    return report.to_json()


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    if args.k < 1:
        from apihelper.errors import InvalidRequestError

        raise InvalidRequestError("--k", "must be at least 1")
    print(json.dumps(asyncio.run(run_eval(args)), indent=2))
    return 0


def add_milvus_arguments(parser: argparse.ArgumentParser) -> None:
    """``--milvus-uri`` and ``--milvus-token``, as every subcommand that opens Milvus takes them."""
    parser.add_argument("--milvus-uri", required=True, help="Milvus Lite directory (.db) or http(s)://host:19530")
    parser.add_argument("--milvus-token", default="", help="Milvus token (user:password or API key)")


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval-retrieval`` on the main parser's subparsers (an argparse _SubParsersAction)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval-retrieval",
        help="score retrieval (top-1, top-5, MRR@10, latency) on a question file",
        description=(
            "Prints JSON: top1, top5, mrr@10, domain_top1 (APIBench questions), latency p50/p99 ms "
            "(embedding included), doc_count, n. Exit status: 0 done, 2 failure."
        ),
    )
    add_milvus_arguments(p)
    p.add_argument("--corpus", required=True, help="the ingested corpus to search")
    p.add_argument(
        "--questions",
        type=Path,
        required=True,
        help='JSONL: {"id","question","answer","alt_answers"} or APIBench {"code","api_data",...} lines',
    )
    p.add_argument("--k", type=int, default=10, help="docs retrieved per question (default 10)")
    p.add_argument("--mode", choices=[m.value for m in EVAL_MODES], default=RetrievalMode.HYBRID.value)
    p.add_argument("--ranked-out", type=Path, help='write {"id","ranked"} per question to this JSONL file')
    p.set_defaults(func=cmd_eval_retrieval)
    return p


__all__ = ["add_eval_parser", "cmd_eval_retrieval", "run_eval"]
