"""What ``eval-answers`` writes: one JSON line per question, and a summary (a table and JSON).

Per question (``--out``): ``id``, ``kind``, ``question``, ``text`` (the answer), ``style`` (how it
was read), ``calls`` (the parsed calls: name, arguments as source text, raw), ``verdict`` and
``api_calls`` (ours: the service's, or computed from the corpus files for ``--answers``),
``labels`` (per evaluator: ``outcome``, ``detail``, ``source``), and for ``--target`` the retrieved
``sources``, ``finish_reason``, ``ttft_ms``, ``total_ms``, the server's ``server_first_token_ms``,
``prompt_tokens``, ``completion_tokens`` and ``error`` (a failed call). Its ``id`` and ``text``
make it an answers file again: ``--answers`` re-scores a run without generating.

Summary, per label: n and the rates of each outcome over all n questions (accuracy = correct / n,
as Gorilla's), our verdict distribution, and, where the evaluator labels hallucinations, a 2x2
table of our ``unknown_api`` verdict against that label (only questions with both a verdict and
an answer count). Latency and speed (``--target``): TTFT p50/p99 as the client saw it, and the
per-stream decode rate, completion tokens after the first per second after the first token (the
server's timings), p50; plus completion tokens per wall-clock second of the whole run.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apihelper.build.evaluation.calls import call_json
from apihelper.build.evaluation.questions import Question
from apihelper.build.evaluation.runner import Generation
from apihelper.build.evaluation.scoring import Outcome, ScoredAnswer
from apihelper.build.evaluation.verdicts import VERDICTS
from apihelper.retriever.evaluate import percentile


@dataclass(frozen=True)
class QuestionResult:
    question: Question
    text: str | None
    scored: ScoredAnswer
    generation: Generation | None = None  # --target only

    def to_json(self) -> dict[str, Any]:
        verdict = self.scored.verdict
        out: dict[str, Any] = {
            "id": self.question.id,
            "kind": self.question.kind.value,
            "question": self.question.text,
            "text": self.text,
            "style": self.scored.style.value,
            "calls": [call_json(c) for c in self.scored.answer.calls],
            "verdict": verdict.verdict if verdict is not None else None,
            "api_calls": [
                {"name": c.name, "matched_key": c.matched_key, "verdict": c.verdict, "reasons": list(c.reasons)}
                for c in (verdict.calls if verdict is not None else ())
            ],
            "labels": {
                name: {"outcome": label.outcome.value, "detail": label.detail, "source": label.source}
                for name, label in self.scored.labels.items()
            },
        }
        g = self.generation
        if g is not None:
            out.update(
                sources=list(g.sources),
                finish_reason=g.finish_reason,
                ttft_ms=g.ttft_ms,
                total_ms=g.total_ms,
                server_first_token_ms=g.server_first_token_ms,
                prompt_tokens=g.prompt_tokens,
                completion_tokens=g.completion_tokens,
                calls_constrained=g.calls_constrained,
                error=g.error,
            )
        return out


# ---------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class LabelSummary:
    name: str
    counts: Mapping[Outcome, int]
    has_hallucination: bool

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def rate(self, outcome: Outcome) -> float:
        return self.counts.get(outcome, 0) / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        rates = {o.value: round(self.rate(o), 6) for o in Outcome}
        if not self.has_hallucination:
            rates.pop(Outcome.HALLUCINATION.value)
        return {"n": self.n, "counts": {o.value: self.counts.get(o, 0) for o in Outcome}, "rates": rates}


@dataclass(frozen=True)
class Agreement:
    """Our ``unknown_api`` verdict against an evaluator's hallucination label, question by question."""

    both: int = 0
    verdict_only: int = 0  # we said unknown_api, the evaluator did not call it a hallucination
    label_only: int = 0  # the evaluator said hallucination, we did not say unknown_api
    neither: int = 0

    @property
    def n(self) -> int:
        return self.both + self.verdict_only + self.label_only + self.neither

    @property
    def agreement(self) -> float:
        return (self.both + self.neither) / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "both": self.both,
            "verdict_only": self.verdict_only,
            "label_only": self.label_only,
            "neither": self.neither,
            "agreement": round(self.agreement, 6),
        }


@dataclass(frozen=True)
class Speed:
    ttft_p50_ms: float
    ttft_p99_ms: float
    tokens_per_s_p50: float  # per stream
    throughput_tokens_per_s: float  # all streams over the run's wall-clock time
    completion_tokens: int
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Summary:
    n: int
    labels: tuple[LabelSummary, ...]
    verdicts: Mapping[str, int]
    agreement: Mapping[str, Agreement]
    failed_calls: int = 0
    speed: Speed | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "labels": {s.name: s.to_json() for s in self.labels},
            "verdicts": dict(self.verdicts),
            "unknown_api_vs_hallucination": {name: a.to_json() for name, a in self.agreement.items()},
            "failed_calls": self.failed_calls,
            "speed": self.speed.to_json() if self.speed is not None else None,
            "notes": list(self.notes),
        }


def _agreement(results: Iterable[QuestionResult], name: str) -> Agreement:
    cells: Counter[tuple[bool, bool]] = Counter()
    for r in results:
        label = r.scored.labels.get(name)
        if label is None or r.scored.verdict is None or label.outcome is Outcome.FAILED:
            continue
        cells[(r.scored.verdict.verdict == "unknown_api", label.outcome is Outcome.HALLUCINATION)] += 1
    return Agreement(cells[(True, True)], cells[(True, False)], cells[(False, True)], cells[(False, False)])


def speed_of(generations: Sequence[Generation], wall_s: float) -> Speed:
    ok = [g for g in generations if g.error is None]
    ttfts = [g.ttft_ms for g in ok if g.ttft_ms is not None]
    rates = [
        (g.completion_tokens - 1) / ((g.server_total_ms - g.server_first_token_ms) / 1000.0)
        for g in ok
        if g.completion_tokens > 1
        and g.server_total_ms is not None
        and g.server_first_token_ms is not None
        and g.server_total_ms > g.server_first_token_ms
    ]
    tokens = sum(g.completion_tokens for g in ok)
    return Speed(
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        tokens_per_s_p50=percentile(rates, 50),
        throughput_tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        completion_tokens=tokens,
        wall_s=wall_s,
    )


def summarize(results: Sequence[QuestionResult], *, wall_s: float | None = None, notes: Sequence[str] = ()) -> Summary:
    names = list(dict.fromkeys(name for r in results for name in r.scored.labels))
    labels = []
    for name in names:
        counts = Counter(r.scored.labels[name].outcome for r in results if name in r.scored.labels)
        has = any(r.scored.labels[name].has_hallucination for r in results if name in r.scored.labels)
        labels.append(LabelSummary(name, dict(counts), has))
    verdicts = Counter(r.scored.verdict.verdict if r.scored.verdict is not None else "none" for r in results)
    ordered = {v: verdicts[v] for v in (*VERDICTS, "none") if verdicts[v]}
    agreement = {s.name: _agreement(results, s.name) for s in labels if s.has_hallucination}
    generations = [r.generation for r in results if r.generation is not None]
    return Summary(
        n=len(results),
        labels=tuple(labels),
        verdicts=ordered,
        agreement=agreement,
        failed_calls=sum(g.error is not None for g in generations),
        speed=speed_of(generations, wall_s) if generations and wall_s is not None else None,
        notes=tuple(notes),
    )


def format_table(summary: Summary) -> str:
    """The summary as fixed-width text for a terminal."""
    head = f"{'label':22} {'n':>5} {'acc':>6} {'hall':>6} {'err':>6} {'unparse':>7} {'failed':>6}"
    lines = [head, "-" * len(head)]
    for s in summary.labels:
        hall = f"{s.rate(Outcome.HALLUCINATION):6.3f}" if s.has_hallucination else f"{'-':>6}"
        lines.append(
            f"{s.name:22} {s.n:5d} {s.rate(Outcome.CORRECT):6.3f} {hall} {s.rate(Outcome.ERROR):6.3f}"
            f" {s.rate(Outcome.UNPARSEABLE):7.3f} {s.rate(Outcome.FAILED):6.3f}"
        )
    lines.append("")
    lines.append("our verdicts: " + ", ".join(f"{v} {n}" for v, n in summary.verdicts.items()))
    for name, a in summary.agreement.items():
        lines.append(
            f"unknown_api vs {name} hallucination (n {a.n}): both {a.both}, verdict only {a.verdict_only}, "
            f"label only {a.label_only}, neither {a.neither}; agreement {a.agreement:.3f}"
        )
    if summary.speed is not None:
        sp = summary.speed
        lines.append(
            f"TTFT p50 {sp.ttft_p50_ms:.0f} ms (p99 {sp.ttft_p99_ms:.0f}), {sp.tokens_per_s_p50:.1f} tokens/s per "
            f"stream (p50), {sp.throughput_tokens_per_s:.1f} tokens/s in all over {sp.wall_s:.1f} s; "
            f"failed calls {summary.failed_calls} of {summary.n}"
        )
    lines.extend(f"note: {note}" for note in summary.notes)
    return "\n".join(lines)


__all__ = ["Agreement", "LabelSummary", "QuestionResult", "Speed", "Summary", "format_table", "speed_of", "summarize"]
