"""Retrieval evaluation: question files, per-query ranking through the real retriever, metrics.

Question files are JSON lines in one of two shapes (detected per line):

- the project's format (../shared/DESIGN.md): ``{"id", "question", "answer", "alt_answers"}``
  (``alt_answers`` optional; an optional ``domain`` is used for the domain metric);
- APIBench training lines (``torchhub_train.json`` style): ``{"code", "api_call", "provider",
  "api_data"}``. The question is the instruction inside ``code`` (the text after
  ``###Instruction:`` up to ``###Output``, or the ``'Instruction': ...`` value up to
  ``'Output':`` in the dict-rendered variant the released files use); the gold key is
  ``api_data.api_call`` with whitespace collapsed; the gold domain is ``api_data.domain``.
  Nothing from ``Output`` (which holds the answer) is ever part of the question.

Metrics: top-1, top-5, MRR@10 (reciprocal rank of the first hit within the first 10, else 0) and,
when questions carry a domain, domain top-1: the first retrieved doc's domain
equals the gold domain (compared case-insensitively with whitespace collapsed, because APIBench
itself spells one domain both "Text-to-Speech" and "Text-To-Speech").

Latency is measured per query around ``Retriever.retrieve`` (embedding included, the query cache
cleared first so every query pays for its embedding), one query at a time, after one warm-up query
that is not from the set. p50/p99 are nearest-rank percentiles.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apihelper.errors import CorpusLoadError
from apihelper.retriever.doc_kinds import domain
from apihelper.retriever.types import RetrievalMode, Retriever

MRR_DEPTH = 10
WARM_UP_QUERY = "warm-up query for the retriever"

_WS = re.compile(r"\s+")
# "###Instruction: ... ###Output: ..." (Gorilla's prompt form) and "{'Instruction': ..., 'Output': ...}"
# (how torchhub_train.json renders it).
_HASH_INSTRUCTION = re.compile(r"###\s*Instruction:\s*(?P<q>.*?)\s*(?:###\s*Output|$)", re.DOTALL)
_DICT_INSTRUCTION = re.compile(r"""['"]Instruction['"]\s*:\s*(?P<q>.*?)\s*,?\s*['"]Output['"]\s*:""", re.DOTALL)


def collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


def same_domain(a: str, b: str) -> bool:
    return collapse(a).casefold() == collapse(b).casefold()


@dataclass(frozen=True)
class EvalQuestion:
    """One question with its acceptable doc keys (answer first) and, optionally, its domain."""

    id: str
    question: str
    answers: tuple[str, ...]
    domain: str | None = None
    corpus: str | None = None


def instruction_of(code: str) -> str:
    """The user instruction inside an APIBench ``code`` field (never the Output part)."""
    for pattern in (_HASH_INSTRUCTION, _DICT_INSTRUCTION):
        match = pattern.search(code)
        if match:
            text = match.group("q").strip()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
                text = text[1:-1]
            return collapse(text)
    return ""


def parse_question(record: Any, line_id: str) -> EvalQuestion:
    """One question from a JSON object of either supported shape; raises ValueError."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "question" in record and "answer" in record:
        answers = [str(record["answer"]), *(str(a) for a in record.get("alt_answers") or [])]
        domain = record.get("domain")
        return EvalQuestion(
            id=str(record.get("id", line_id)),
            question=str(record["question"]),
            answers=tuple(dict.fromkeys(answers)),
            domain=str(domain) if domain else None,
            corpus=str(record["corpus"]) if record.get("corpus") else None,
        )
    if "code" in record and isinstance(record.get("api_data"), dict):
        data = record["api_data"]
        gold = data.get("api_call") or record.get("api_call")
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError("api_data has no api_call")
        question = instruction_of(str(record["code"]))
        if not question:
            raise ValueError("no instruction found in 'code'")
        domain = data.get("domain")
        return EvalQuestion(
            id=str(record.get("id", line_id)),
            question=question,
            answers=(collapse(gold),),
            domain=str(domain) if domain else None,
        )
    raise ValueError("neither {question, answer} nor {code, api_data}")


def load_questions(path: Path, *, corpus: str | None = None) -> list[EvalQuestion]:
    """All questions of ``path``; with ``corpus``, only lines whose ``corpus`` field is absent or equal.

    Raises CorpusLoadError for an unreadable file, a bad line (naming it) or no questions.
    """
    questions: list[EvalQuestion] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusLoadError(str(path), f"cannot read question file: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            question = parse_question(json.loads(line), f"{Path(path).stem}-{number}")
        except (json.JSONDecodeError, ValueError) as exc:
            raise CorpusLoadError(f"{path}:{number}", f"bad question line: {exc}") from exc
        if corpus is None or question.corpus in (None, corpus):
            questions.append(question)
    if not questions:
        raise CorpusLoadError(str(path), "no questions" + (f" for corpus {corpus!r}" if corpus else ""))
    return questions


@dataclass(frozen=True)
class RankedAnswer:
    """What the retriever returned for one question, best first."""

    id: str
    ranked: list[str]
    domains: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ranked": self.ranked}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class RankScore:
    """How rankings found their questions' gold keys: the share found first, in the top 5, and
    the mean reciprocal rank within the top ``MRR_DEPTH``."""

    n: int
    top1: float
    top5: float
    mrr10: float

    def to_json(self) -> dict[str, float]:
        return {"top1": round(self.top1, 4), "top5": round(self.top5, 4), "mrr@10": round(self.mrr10, 4)}


def rank_score(questions: Sequence[EvalQuestion], rankings: Sequence[Sequence[str]]) -> RankScore:
    """The ``RankScore`` of ``rankings`` (keys, best first; same order as ``questions``)."""
    top1 = top5 = rr = 0.0
    for question, ranked in zip(questions, rankings, strict=True):
        gold = set(question.answers)
        rank = next((i for i, key in enumerate(ranked[:MRR_DEPTH]) if key in gold), None)
        if rank is not None:
            top1 += rank == 0
            top5 += rank < 5
            rr += 1.0 / (rank + 1)
    n = len(questions)
    return RankScore(n, top1 / n if n else 0.0, top5 / n if n else 0.0, rr / n if n else 0.0)


@dataclass(frozen=True)
class EvalReport:
    corpus: str
    mode: str
    k: int
    n: int
    doc_count: int
    top1: float
    top5: float
    mrr10: float
    domain_top1: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "corpus": self.corpus,
            "mode": self.mode,
            "k": self.k,
            "n": self.n,
            "doc_count": self.doc_count,
            **RankScore(self.n, self.top1, self.top5, self.mrr10).to_json(),
        }
        if self.domain_top1 is not None:
            out["domain_top1"] = round(self.domain_top1, 4)
        out["latency_ms"] = {
            "p50": round(self.latency_p50_ms, 2),
            "p99": round(self.latency_p99_ms, 2),
            "mean": round(self.latency_mean_ms, 2),
        }
        return out


def score(
    questions: Sequence[EvalQuestion],
    answers: Sequence[RankedAnswer],
    *,
    corpus: str,
    mode: str,
    k: int,
    doc_count: int,
) -> EvalReport:
    """Metrics of ``answers`` (same order as ``questions``)."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    n = len(questions)
    ranks = rank_score(questions, [a.ranked for a in answers])
    domain_hits = 0
    domain_n = 0
    for question, answer in zip(questions, answers, strict=False):
        if question.domain is not None:
            domain_n += 1
            if answer.domains and same_domain(answer.domains[0], question.domain):
                domain_hits += 1
    latencies = [a.seconds * 1000.0 for a in answers]
    return EvalReport(
        corpus=corpus,
        mode=mode,
        k=k,
        n=n,
        doc_count=doc_count,
        top1=ranks.top1,
        top5=ranks.top5,
        mrr10=ranks.mrr10,
        domain_top1=domain_hits / domain_n if domain_n else None,
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        latency_mean_ms=sum(latencies) / n if n else 0.0,
    )


def _clear_query_cache(retriever: Retriever) -> None:
    embedder = getattr(retriever, "embedder", None)
    clear = getattr(embedder, "clear_query_cache", None)
    if callable(clear):
        clear()


async def rank_questions(
    retriever: Retriever,
    questions: Iterable[EvalQuestion],
    *,
    corpus: str,
    mode: RetrievalMode,
    k: int,
    warm_up: bool = True,
) -> list[RankedAnswer]:
    """Ask ``retriever`` every question in turn (timed one by one); answers in question order."""
    if warm_up:
        await retriever.retrieve(WARM_UP_QUERY, corpora=[corpus], top_k=k, mode=mode)
    answers: list[RankedAnswer] = []
    for question in questions:
        _clear_query_cache(retriever)
        started = time.perf_counter()
        result = await retriever.retrieve(question.question, corpora=[corpus], top_k=k, mode=mode)
        elapsed = time.perf_counter() - started
        answers.append(
            RankedAnswer(
                id=question.id,
                ranked=[hit.doc.key for hit in result.docs],
                domains=[domain(hit.doc) for hit in result.docs],
                seconds=elapsed,
            )
        )
    return answers


async def evaluate(
    retriever: Retriever,
    questions: Sequence[EvalQuestion],
    *,
    corpus: str,
    mode: RetrievalMode = RetrievalMode.HYBRID,
    k: int = MRR_DEPTH,
) -> tuple[EvalReport, list[RankedAnswer]]:
    """Rank every question over ``corpus`` and score the rankings; returns report and rankings."""
    if not questions:
        raise ValueError("no questions to evaluate")
    doc_count = 0
    for info in await retriever.list_corpora():
        if info.name == corpus:
            doc_count = info.doc_count
    answers = await rank_questions(retriever, questions, corpus=corpus, mode=mode, k=k)
    report = score(questions, answers, corpus=corpus, mode=mode.value, k=k, doc_count=doc_count)
    return report, answers


def write_ranked(path: Path, answers: Iterable[RankedAnswer]) -> None:
    """``{"id", "ranked"}`` per line (the --ranked-out format)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for answer in answers:
            handle.write(json.dumps(answer.to_json(), ensure_ascii=False) + "\n")


__all__ = [
    "EvalQuestion",
    "EvalReport",
    "RankedAnswer",
    "evaluate",
    "instruction_of",
    "load_questions",
    "parse_question",
    "percentile",
    "rank_questions",
    "same_domain",
    "score",
    "write_ranked",
]
