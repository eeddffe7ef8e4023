"""Retrieval benchmark: ingest the ../shared corpora into a temporary Milvus Lite, run every split of
every question set in every mode through the real ``MilvusRetriever``, beside plain baselines.

    .venv/bin/python bench/retrieval/run.py [--splits train,validation] [--sets rest,functional,...]
        [--modes hybrid,dense,keyword] [--no-baselines] [--out results.md] [--json-out results.json]
        [--data-dir DIR]

Splits come from the committed manifests in bench/retrieval/splits/ (``make_splits.py`` cut them
once, with a fixed seed): tune on train, choose on validation, and ask for ``--splits test`` only
for the final figure of a change that is kept.

Corpora (../shared/corpora): rest = backend.ai/openapi.json; functional = the 24.3.0 client wheel
restricted to ai.backend.client.func; functional_wheel = the same wheel ingested whole, as a user
would; torchhub = apibench/torchhub_api.jsonl; bfcl_live_multiple / bfcl_multiple = the function
schemas pooled from the BFCL question files (``bfcl_corpus.py``, built into the temporary
directory); huggingface / tensorflowhub = APIBench files with no questions here (latency only,
torchhub train questions as load).

Rows: top-1 / top-5 / MRR@10 and query latency p50 / p99 (embedding included, one query at a time,
query cache cleared) for each mode, and beside them *plain dense* (MiniLM over the doc text) and
*plain BM25* (over the doc text's plain tokens) on the same questions (bench/retrieval/baselines.py;
in memory, so no latency). Ingest time is reported per corpus and per 1,000 docs.

Nothing is written inside the repository unless ``--out``/``--json-out`` say so.
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

from apihelper.bench.retrieval import bfcl_corpus
from apihelper.bench.retrieval.splits import SPLIT_NAMES, load_split
from apihelper.retriever.evaluate import EvalQuestion, rank_score
from apihelper.retriever.types import CorpusFormat, RetrievalMode

ROOT = Path(__file__).resolve().parents[2]

SHARED = ROOT.parent / "shared" / "corpora"
BACKEND_AI = SHARED / "backend.ai"
APIBENCH = SHARED / "apibench"
WHEEL = BACKEND_AI / "backend.ai_client-24.3.0-py3-none-any.whl"
BFCL_SETS = {
    "bfcl_live_multiple": "BFCL_v4_live_multiple",
    "bfcl_multiple": "BFCL_v4_multiple",
    "bfcl_parallel_multiple": "BFCL_v4_parallel_multiple",
    "bfcl_simple_java": "BFCL_v4_simple_java",
    "bfcl_simple_javascript": "BFCL_v4_simple_javascript",
}


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    path: Path  # for BFCL corpora: relative to the build directory
    fmt: CorpusFormat
    include: tuple[str, ...] = ()
    built: bool = False  # made by bfcl_corpus.py into the temporary directory


@dataclass(frozen=True)
class QuestionSet:
    name: str
    corpus: str
    manifest: str | None  # None: no questions for this corpus (latency only)
    bfcl: str | None = None  # the BFCL file whose built questions the manifest names


CORPORA = [
    CorpusSpec("rest", BACKEND_AI / "openapi.json", CorpusFormat.OPENAPI),
    CorpusSpec("functional", WHEEL, CorpusFormat.PYTHON, ("ai.backend.client.func",)),
    CorpusSpec("functional_wheel", WHEEL, CorpusFormat.PYTHON),
    CorpusSpec("torchhub", APIBENCH / "torchhub_api.jsonl", CorpusFormat.APIBENCH),
    *(
        CorpusSpec(name, Path(f"{stem}.functions.jsonl"), CorpusFormat.FUNCTIONS, built=True)
        for name, stem in BFCL_SETS.items()
    ),
    CorpusSpec("huggingface", APIBENCH / "huggingface_api.jsonl", CorpusFormat.APIBENCH),
    CorpusSpec("tensorflowhub", APIBENCH / "tensorflowhub_api.jsonl", CorpusFormat.APIBENCH),
]

SETS = [
    QuestionSet("rest", "rest", "backendai_rest"),
    QuestionSet("functional", "functional", "backendai_functional"),
    QuestionSet("functional_wheel", "functional_wheel", "backendai_functional"),
    QuestionSet("torchhub", "torchhub", "torchhub"),
    *(QuestionSet(name, name, name, bfcl=stem) for name, stem in BFCL_SETS.items()),
    QuestionSet("huggingface", "huggingface", None),
    QuestionSet("tensorflowhub", "tensorflowhub", None),
]
LATENCY_LOAD = ("torchhub", "train", 200)  # what the latency-only corpora are sent
LATENCY_GOAL = "p50 <= 20 ms, p99 <= 40 ms"
BASELINE_MODES = ("plain dense", "plain BM25")


def build_bfcl(directory: Path) -> None:
    for stem in BFCL_SETS.values():
        bfcl_corpus.write_set(SHARED / "bfcl", stem, directory)


def corpus_path(spec: CorpusSpec, build_dir: Path) -> Path:
    return build_dir / spec.path if spec.built else spec.path


def ingest_all(
    uri: str,
    corpora: list[CorpusSpec],
    build_dir: Path,
    *,
    views: bool = False,
    links: tuple[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Ingest every corpus (incremental); returns per-corpus docs, seconds and seconds per 1,000 docs.

    ``views``: one more vector per view of a doc (``ingest_corpus``); ``links``: two corpora that
    explain each other (``apihelper-build ingest --link``)."""
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import format_report, ingest_corpus
    from apihelper.retriever.loaders import load_corpus
    from apihelper.retriever.milvus_store import MilvusStore

    specs = {spec.name: spec for spec in CORPORA}
    partner = dict([links, links[::-1]]) if links else {}

    def partner_docs(name: str) -> tuple[str, list[Any]] | None:
        if name not in partner:
            return None
        other = specs[partner[name]]
        _, loaded = load_corpus(corpus_path(other, build_dir), other.fmt, include=list(other.include) or None)
        return other.name, loaded.docs

    embedder = Embedder()
    store = MilvusStore(uri)
    out: dict[str, dict[str, Any]] = {}
    try:
        for spec in corpora:
            started = time.perf_counter()
            report = ingest_corpus(
                store,
                embedder,
                spec.name,
                corpus_path(spec, build_dir),
                spec.fmt,
                progress=False,
                include=list(spec.include) or None,
                views=views,
                linked=partner_docs(spec.name),
            )
            seconds = time.perf_counter() - started
            docs = report.added + report.updated + report.unchanged
            print(f"  {format_report(report)} in {seconds:.1f}s", file=sys.stderr)
            out[spec.name] = {
                "docs": docs,
                "written": report.written,
                "seconds": round(seconds, 1),
                "seconds_per_1000": round(1000 * seconds / docs, 1) if report.written else None,
            }
    finally:
        store.close()
    return out


def questions_of(qset: QuestionSet, split: str, build_dir: Path) -> list[EvalQuestion]:
    if qset.manifest is None:
        name, load_split_name, count = LATENCY_LOAD
        return load_split(name, load_split_name, SHARED)[:count]
    bfcl = build_dir / f"{qset.bfcl}.questions.jsonl" if qset.bfcl else None
    return load_split(qset.manifest, split, SHARED, bfcl_questions=bfcl)


async def baseline_rows(uri: str, qset: QuestionSet, split: str, questions: list[EvalQuestion]) -> list[dict[str, Any]]:
    """Plain dense and plain BM25 over the corpus as ingested (its docs read back from Milvus)."""
    from apihelper.bench.retrieval.baselines import PlainBM25, PlainDense
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.milvus_store import MilvusStore

    def compute() -> list[dict[str, Any]]:
        store = MilvusStore(uri)
        try:
            docs = store.corpus_docs(qset.corpus)
        finally:
            store.close()
        texts = [q.question for q in questions]
        dense = PlainDense(docs, Embedder()).rank_many(texts, 10)
        bm25 = PlainBM25(docs)
        keyword = [bm25.rank(text, 10) for text in texts]
        return [
            {
                "set": qset.name,
                "split": split,
                "mode": mode,
                "n": len(questions),
                "doc_count": len(docs),
                "quality": True,
                **rank_score(questions, ranked).to_json(),
            }
            for mode, ranked in (("plain dense", dense), ("plain BM25", keyword))
        ]

    return await asyncio.to_thread(compute)


async def run_sets(
    uri: str,
    sets: list[QuestionSet],
    splits: list[str],
    modes: list[RetrievalMode],
    build_dir: Path,
    baselines: bool,
    query_adapter: str = "bundled",
) -> list[dict[str, Any]]:
    from apihelper.retriever.evaluate import evaluate
    from apihelper.retriever.milvus_retriever import open_retriever

    rows: list[dict[str, Any]] = []
    retriever = await open_retriever(uri, query_adapter=query_adapter)
    try:
        for qset in sets:
            for split in splits if qset.manifest else ["latency"]:
                questions = questions_of(qset, split, build_dir)
                for mode in modes:
                    report, _ = await evaluate(retriever, questions, corpus=qset.corpus, mode=mode, k=10)
                    row = {"set": qset.name, "split": split, "quality": qset.manifest is not None, **report.to_json()}
                    rows.append(row)
                    print(f"  {qset.name:18s} {split:10s} {mode.value:8s} {_short(row)}", file=sys.stderr)
                if baselines and qset.manifest:
                    for row in await baseline_rows(uri, qset, split, questions):
                        rows.append(row)
                        print(f"  {qset.name:18s} {split:10s} {row['mode']:8s} {_short(row)}", file=sys.stderr)
    finally:
        await retriever.close()
    return rows


def _short(row: dict[str, Any]) -> str:
    lat = row.get("latency_ms")
    timing = f" p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms" if lat else ""
    if not row["quality"]:
        return f"latency only{timing}"
    dom = f" dom {row['domain_top1']:.3f}" if "domain_top1" in row else ""
    return f"top1 {row['top1']:.3f} top5 {row['top5']:.3f} mrr {row['mrr@10']:.3f}{dom}{timing} (n={row['n']})"


def markdown(rows: list[dict[str, Any]], ingest: dict[str, dict[str, Any]], wall_s: float) -> str:
    lines = [
        "| set | split | mode | n | docs | top-1 | top-5 | MRR@10 | domain top-1 | p50 ms | p99 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lat = row.get("latency_ms")
        timing = [f"{lat['p50']:.1f}", f"{lat['p99']:.1f}"] if lat else ["–", "–"]
        if row["quality"]:
            cells = [f"{row['top1']:.3f}", f"{row['top5']:.3f}", f"{row['mrr@10']:.3f}"]
        else:
            cells = ["n/a", "n/a", "n/a"]
        dom = f"{row['domain_top1']:.3f}" if "domain_top1" in row else "–"
        lines.append(
            f"| {row['set']} | {row['split']} | {row['mode']} | {row['n']} | {row['doc_count']} | "
            f"{' | '.join(cells)} | {dom} | {' | '.join(timing)} |"
        )
    lines += ["", "| corpus | docs | ingest s | s per 1,000 docs |", "|---|---:|---:|---:|"]
    for name, info in ingest.items():
        per = info["seconds_per_1000"]
        lines.append(f"| {name} | {info['docs']} | {info['seconds']} | {per if per is not None else 'unchanged'} |")
    lines += [
        "",
        f"Latency goal: {LATENCY_GOAL} (per query, embedding included, {os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f}). Whole run {wall_s:.0f}s. Plain baselines are "
        "computed in memory (no latency). n/a: no questions for this corpus here; its rows time "
        f"{LATENCY_LOAD[2]} {LATENCY_LOAD[0]} {LATENCY_LOAD[1]} questions as load.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json-out", type=Path, help="write every row as JSON here")
    parser.add_argument("--splits", default="train,validation", help="comma-separated: train, validation, test")
    parser.add_argument("--modes", default="hybrid,dense,keyword")
    parser.add_argument("--sets", default=",".join(s.name for s in SETS))
    parser.add_argument("--no-baselines", action="store_true", help="skip plain dense and plain BM25")
    parser.add_argument("--data-dir", type=Path, help="keep the Milvus Lite database here (default: a temp dir)")
    parser.add_argument(
        "--views",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ingest a vector per view of a doc too (as ingest does by default; --no-views: one per doc)",
    )
    parser.add_argument("--link", metavar="A,B", help="two corpora that explain each other, e.g. rest,functional")
    parser.add_argument(
        "--query-adapter",
        default="none",
        help='"none" (plain MiniLM queries, the default), "bundled" (the shipped adapter) or a file',
    )
    args = parser.parse_args(argv)

    if not SHARED.is_dir():
        print(f"{SHARED} is missing: the benchmark needs ../shared/corpora", file=sys.stderr)
        return 2
    splits = [s for s in args.splits.split(",") if s]
    unknown = [s for s in splits if s not in SPLIT_NAMES]
    if unknown:
        parser.error(f"unknown split(s) {unknown}; choose from {SPLIT_NAMES}")
    modes = [RetrievalMode(m) for m in args.modes.split(",") if m]
    wanted = set(args.sets.split(","))
    sets = [s for s in SETS if s.name in wanted]
    needed = {s.corpus for s in sets} | ({LATENCY_LOAD[0]} if any(s.manifest is None for s in sets) else set())
    corpora = [c for c in CORPORA if c.name in needed]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apihelper-bench-") as tmp:
        base = args.data_dir or Path(tmp)
        build_dir = Path(tmp) / "built"
        build_bfcl(build_dir)
        uri = str(base / "milvus.db")
        print(f"ingesting {len(corpora)} corpora into {uri}", file=sys.stderr)
        links = tuple(args.link.split(",")) if args.link else None
        if links is not None and (len(links) != 2 or not {c.name for c in CORPORA} >= set(links)):
            parser.error(f"--link {args.link!r}: expected two corpus names A,B")
        ingest = ingest_all(uri, corpora, build_dir, views=args.views, links=links)
        print("evaluating", file=sys.stderr)
        rows = asyncio.run(run_sets(uri, sets, splits, modes, build_dir, not args.no_baselines, args.query_adapter))
    table = markdown(rows, ingest, time.perf_counter() - started)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "ingest": ingest}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
