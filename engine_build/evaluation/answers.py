"""Answers produced elsewhere (``eval-answers --answers FILE``): one JSON line per question.

Accepted lines: ``{"id": ..., "text": ...}`` (our own per-question output has both, so a run can
be re-scored) and Gorilla's response files as they are: ``{"question_id": N, "text": ...,
"answer_id", "model_id", ...}``. A line is matched to a question by its id; an integer (or
all-digit) id that names no question is taken as a 1-based line number of the question file, which
is what Gorilla's ``question_id`` is. A line without a string ``text`` is an answer that has no
text (Gorilla counts it, as neither correct nor hallucinated); a question without a line has no
answer. Later lines for the same question replace earlier ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.build.evaluation.questions import Question
from apihelper.errors import CorpusLoadError


@dataclass(frozen=True)
class AnswerLine:
    key: str  # the line's id or question_id, as text
    text: str | None


@dataclass(frozen=True)
class MatchedAnswers:
    by_question: Mapping[str, AnswerLine]  # question id -> its answer
    unmatched: tuple[str, ...]  # keys of lines that name no question


def read_answers(path: Path) -> list[AnswerLine]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusLoadError(str(path), f"cannot read answers: {exc}") from exc
    out: list[AnswerLine] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusLoadError(f"{path}:{number}", f"not JSON: {exc}") from exc
        key = record.get("id", record.get("question_id")) if isinstance(record, dict) else None
        if key is None:
            raise CorpusLoadError(f"{path}:{number}", 'an answer line needs "id" or "question_id"')
        text = record.get("text")
        out.append(AnswerLine(str(key), text if isinstance(text, str) else None))
    return out


def match_answers(lines: Sequence[AnswerLine], questions: Sequence[Question]) -> MatchedAnswers:
    by_id = {q.id: q for q in questions}
    by_number = {q.number: q for q in questions}
    matched: dict[str, AnswerLine] = {}
    unmatched: list[str] = []
    for line in lines:
        question = by_id.get(line.key)
        if question is None and line.key.isdigit():
            question = by_number.get(int(line.key))
        if question is None:
            unmatched.append(line.key)
        else:
            matched[question.id] = line
    return MatchedAnswers(matched, tuple(unmatched))


__all__ = ["AnswerLine", "MatchedAnswers", "match_answers", "read_answers"]
