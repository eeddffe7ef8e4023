"""Hybrid query latency, end to end and per stage, on a Milvus database with corpora in it.

    .venv/bin/python bench/retrieval/latency.py --milvus-uri DB --corpus NAME [--corpus ...]
        [--questions torchhub] [--n 150] [--rerank] [--query-adapter none]

End to end: ``MilvusRetriever.retrieve`` in hybrid mode, top 5, query-embedding cache cleared
before each query (as a new question would find it), every stage on: the query adapter where
``--query-adapter`` names one, fusion, ranking priors and, with ``--rerank``, the second stage.
Per stage, the same query is then run through each stage alone, one after another: query
embedding, dense search, BM25 search, fusion, re-rank (the end-to-end time adds the thread
hand-offs and the corpus lookup). Percentiles are nearest-rank; the load average is printed with
every row, since on a shared machine it moves the figures more than any change here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from apihelper.bench.retrieval import run
from apihelper.retriever.evaluate import percentile
from apihelper.retriever.fusion import fuse_hits
from apihelper.retriever.milvus_retriever import MilvusRetriever
from apihelper.retriever.milvus_store import MilvusStore, hybrid_candidates
from apihelper.retriever.rerank import LODO_RERANK, OFF, FieldCache
from apihelper.retriever.types import RetrievalMode

STAGES = ("end to end", "embed", "dense", "bm25", "fusion", "re-rank")
TOP_K = 5


async def measure(uri: str, corpora: list[str], questions: list[str], rerank: bool, adapter: str) -> list[str]:
    from apihelper.retriever.adapter import query_embedder
    from apihelper.retriever.embedding import Embedder

    base = Embedder()
    base.warm_up()
    embedder = query_embedder(base, adapter)
    store = MilvusStore(uri)
    lines = []
    try:
        chosen = LODO_RERANK if rerank else OFF
        retriever = MilvusRetriever(store, embedder, rerank=chosen)
        fields = FieldCache()
        limit = hybrid_candidates(TOP_K)
        for corpus in corpora:
            times: dict[str, list[float]] = {stage: [] for stage in STAGES}
            await retriever.retrieve(questions[0], corpora=[corpus], top_k=TOP_K, mode=RetrievalMode.HYBRID)
            for question in questions:
                base.clear_query_cache()
                t0 = time.perf_counter()
                await retriever.retrieve(question, corpora=[corpus], top_k=TOP_K, mode=RetrievalMode.HYBRID)
                t1 = time.perf_counter()
                base.clear_query_cache()
                vector = embedder.embed_query(question)
                t2 = time.perf_counter()
                dense = store.search(
                    corpus, mode=RetrievalMode.DENSE, query_text=question, query_vector=vector, top_k=limit
                )
                t3 = time.perf_counter()
                keyword = store.search(
                    corpus, mode=RetrievalMode.KEYWORD, query_text=question, query_vector=None, top_k=limit
                )
                t4 = time.perf_counter()
                fuse_hits(dense, keyword, TOP_K, query=question)
                t5 = time.perf_counter()
                fuse_hits(dense, keyword, TOP_K, query=question, rerank=chosen, fields_of=fields)
                t6 = time.perf_counter()
                for stage, seconds in zip(
                    STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, max(0.0, (t6 - t5) - (t5 - t4))), strict=True
                ):
                    times[stage].append(seconds)
            load = os.getloadavg()[0]
            for stage in STAGES:
                ms = [1000 * s for s in times[stage]]
                lines.append(
                    f"| {corpus} | {stage} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | {load:.1f} |"
                )
    finally:
        store.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--milvus-uri", required=True, help="a Milvus Lite .db or a server URI, corpora ingested")
    parser.add_argument("--corpus", action="append", required=True, help="a corpus to time (repeatable)")
    parser.add_argument("--questions", default="torchhub", help="the question set to send (its train split)")
    parser.add_argument("--n", type=int, default=150, help="questions per corpus")
    parser.add_argument("--rerank", action="store_true", help="with the second stage (retriever.rerank)")
    parser.add_argument(
        "--query-adapter",
        default="none",
        help='"none" (plain MiniLM queries, the default), "bundled" (the shipped adapter) or a file',
    )
    args = parser.parse_args(argv)
    if not run.SHARED.is_dir():
        print(f"{run.SHARED} is missing: the questions come from ../shared/corpora", file=sys.stderr)
        return 2
    sets = {s.name: s for s in run.SETS}
    with tempfile.TemporaryDirectory(prefix="apihelper-latency-") as tmp:
        run.build_bfcl(Path(tmp))
        questions = [q.question for q in run.questions_of(sets[args.questions], "train", Path(tmp))][: args.n]
    lines = asyncio.run(measure(args.milvus_uri, args.corpus, questions, args.rerank, args.query_adapter))
    print(f"re-rank {'on' if args.rerank else 'off'}; query adapter {args.query_adapter}; {os.cpu_count()} CPUs")
    print("| corpus | stage | n | p50 ms | p99 ms | load average |\n|---|---|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
