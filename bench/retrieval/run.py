"""Retrieval benchmark: ingest the ../shared corpora into a temporary Milvus Lite, run every dev set
in every mode through the real ``MilvusRetriever``, and print a Markdown table beside the baselines.

    .venv/bin/python bench/retrieval/run.py [--out results.md] [--json-out results.json]
        [--modes hybrid,dense,keyword] [--sets rest,functional,torchhub,...] [--data-dir DIR]

Corpora (../shared/corpora): rest = backend.ai/openapi.json; functional = the 26.9.6 client wheel
restricted to ai.backend.client.func; torchhub / huggingface / tensorflowhub = APIBench API files.
Dev sets: backend.ai/dev_questions.jsonl split by its ``corpus`` field; apibench/torchhub_train.json
(837 instructions) over torchhub. HuggingFace and TensorHub have no held-out questions here, so
their quality is "n/a" (questions made from the records would be scored against the very text they
were made from); their rows only time queries, using the torchhub instructions as load.

Nothing is written inside the repository unless ``--out``/``--json-out`` say so: the Milvus Lite
database lives in a temporary directory (deleted at the end) unless ``--data-dir`` names one to
keep between runs (ingest is incremental, so a kept directory makes reruns fast).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.retriever.types import CorpusFormat, RetrievalMode

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "corpora"
BACKEND_AI = SHARED / "backend.ai"
APIBENCH = SHARED / "apibench"


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    path: Path
    fmt: CorpusFormat
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class DevSet:
    name: str
    corpus: str
    questions: Path | None  # None: no held-out questions (latency only)
    filter_corpus: str | None = None  # keep only question lines with this "corpus" field
    load_from: Path | None = None  # latency-only sets: whose questions to send as load


CORPORA = [
    CorpusSpec("rest", BACKEND_AI / "openapi.json", CorpusFormat.OPENAPI),
    CorpusSpec(
        "functional",
        BACKEND_AI / "backend_ai_client-26.9.6-py3-none-any.whl",
        CorpusFormat.PYTHON,
        ("ai.backend.client.func",),
    ),
    CorpusSpec("torchhub", APIBENCH / "torchhub_api.jsonl", CorpusFormat.APIBENCH),
    CorpusSpec("huggingface", APIBENCH / "huggingface_api.jsonl", CorpusFormat.APIBENCH),
    CorpusSpec("tensorflowhub", APIBENCH / "tensorflowhub_api.jsonl", CorpusFormat.APIBENCH),
]

DEV_SETS = [
    DevSet("rest", "rest", BACKEND_AI / "dev_questions.jsonl", filter_corpus="rest"),
    DevSet("functional", "functional", BACKEND_AI / "dev_questions.jsonl", filter_corpus="functional"),
    DevSet("torchhub", "torchhub", APIBENCH / "torchhub_train.json"),
    DevSet("huggingface", "huggingface", None, load_from=APIBENCH / "torchhub_train.json"),
    DevSet("tensorflowhub", "tensorflowhub", None, load_from=APIBENCH / "torchhub_train.json"),
]

# Published or issue-stated numbers shown beside ours (top-1 exact API).
BASELINES: dict[str, str] = {
    "rest": "plain MiniLM dense ~0.43",
    "functional": "plain MiniLM dense ~0.57",
    "torchhub": "GPT-Index 0.091, BM25 0.075",
    "huggingface": "GPT-Index 0.167, BM25 0.065",
    "tensorflowhub": "GPT-Index 0.396, BM25 0.222",
}
GOALS: dict[str, str] = {
    "rest": "top1>=0.90 top5>=0.98",
    "functional": "top1>=0.90 top5>=0.98",
    "torchhub": "top1>=0.18 domain>=0.90",
    "huggingface": "top1>=0.33 (held-out, not here)",
    "tensorflowhub": "top1>=0.79 (held-out, not here)",
}
LATENCY_GOAL = "p50<=15 p99<=40 ms"
LATENCY_LOAD_QUESTIONS = 200  # torchhub instructions sent to the latency-only corpora


def ingest_all(uri: str, corpora: list[CorpusSpec]) -> dict[str, dict[str, Any]]:
    """Ingest every corpus (incremental); returns per-corpus counts and seconds."""
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import format_report, ingest_corpus
    from apihelper.retriever.milvus_store import MilvusStore

    embedder = Embedder()
    store = MilvusStore(uri)
    out: dict[str, dict[str, Any]] = {}
    try:
        for spec in corpora:
            started = time.perf_counter()
            report = ingest_corpus(
                store, embedder, spec.name, spec.path, spec.fmt, progress=False, include=list(spec.include) or None
            )
            seconds = time.perf_counter() - started
            print(f"  {format_report(report)} in {seconds:.1f}s", file=sys.stderr)
            out[spec.name] = {"seconds": round(seconds, 1), "written": report.written}
    finally:
        store.close()
    return out


async def run_sets(uri: str, sets: list[DevSet], modes: list[RetrievalMode]) -> list[dict[str, Any]]:
    from apihelper.retriever.evaluate import evaluate, load_questions
    from apihelper.retriever.milvus_retriever import open_retriever

    retriever = await open_retriever(uri)
    rows: list[dict[str, Any]] = []
    try:
        for dev in sets:
            if dev.questions is not None:
                questions = load_questions(dev.questions, corpus=dev.filter_corpus)
            else:
                assert dev.load_from is not None
                questions = load_questions(dev.load_from)[:LATENCY_LOAD_QUESTIONS]
            for mode in modes:
                started = time.perf_counter()
                report, _ = await evaluate(retriever, questions, corpus=dev.corpus, mode=mode, k=10)
                row = report.to_json()
                row["set"] = dev.name
                row["quality"] = dev.questions is not None
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(f"  {dev.name:13s} {mode.value:7s} {_short(row)}", file=sys.stderr)
    finally:
        await retriever.close()
    return rows


def _short(row: dict[str, Any]) -> str:
    lat = row["latency_ms"]
    if not row["quality"]:
        return f"n/a (latency only) p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms"
    dom = f" dom {row['domain_top1']:.3f}" if "domain_top1" in row else ""
    return (
        f"top1 {row['top1']:.3f} top5 {row['top5']:.3f} mrr {row['mrr@10']:.3f}{dom} "
        f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms (n={row['n']})"
    )


def markdown(rows: list[dict[str, Any]], ingest: dict[str, dict[str, Any]], wall_s: float) -> str:
    lines = [
        "| dev set | mode | n | docs | top-1 | top-5 | MRR@10 | domain top-1 | p50 ms | p99 ms | baseline top-1 | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lat = row["latency_ms"]
        if row["quality"]:
            cells = [f"{row['top1']:.3f}", f"{row['top5']:.3f}", f"{row['mrr@10']:.3f}"]
            dom = f"{row['domain_top1']:.3f}" if "domain_top1" in row else "–"
        else:
            cells = ["n/a", "n/a", "n/a"]
            dom = "n/a"
        lines.append(
            f"| {row['set']} | {row['mode']} | {row['n']} | {row['doc_count']} | {' | '.join(cells)} | {dom} "
            f"| {lat['p50']:.1f} | {lat['p99']:.1f} | {BASELINES.get(row['set'], '')} | {GOALS.get(row['set'], '')} |"
        )
    ingest_s = sum(v["seconds"] for v in ingest.values())
    lines += [
        "",
        f"Latency goal: {LATENCY_GOAL} (per query, embedding included, {os.cpu_count()} CPUs). "
        f"Ingest {ingest_s:.0f}s, whole run {wall_s:.0f}s. "
        "n/a: no held-out questions for this corpus here; those rows time torchhub instructions as load.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json-out", type=Path, help="write every row as JSON here")
    parser.add_argument("--modes", default="hybrid,dense,keyword")
    parser.add_argument("--sets", default=",".join(d.name for d in DEV_SETS))
    parser.add_argument("--data-dir", type=Path, help="keep the Milvus Lite database here (default: a temp dir)")
    args = parser.parse_args(argv)

    if not SHARED.is_dir():
        print(f"{SHARED} is missing: the benchmark needs ../shared/corpora", file=sys.stderr)
        return 2
    modes = [RetrievalMode(m) for m in args.modes.split(",") if m]
    wanted = set(args.sets.split(","))
    sets = [d for d in DEV_SETS if d.name in wanted]
    corpora = [c for c in CORPORA if c.name in {d.corpus for d in sets}]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apihelper-bench-") as tmp:
        base = args.data_dir or Path(tmp)
        uri = str(base / "milvus.db")
        print(f"ingesting {len(corpora)} corpora into {uri}", file=sys.stderr)
        ingest = ingest_all(uri, corpora)
        print("evaluating", file=sys.stderr)
        rows = asyncio.run(run_sets(uri, sets, modes))
    table = markdown(rows, ingest, time.perf_counter() - started)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "ingest": ingest}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
