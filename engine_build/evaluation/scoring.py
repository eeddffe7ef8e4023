"""One scorer per kind of question: from an answer to the evaluator's labels. Pure functions.

Every label has one :class:`Outcome`: ``correct``; ``hallucination`` (the call names no API that
exists, where the evaluator has that notion); ``error`` (a call was read and it is wrong);
``unparseable`` (no call could be read); ``failed`` (nothing to score: the service call failed,
the answers file has no line for the question, or its gold cannot be checked). Rates are over all
questions, as Gorilla's are; Gorilla's "error" column is ``error + unparseable + failed``.

- APIBench, two labels. ``gorilla``: Gorilla's rule exactly, on the answer text
  (:func:`gorilla_ast.label_answer`: TorchHub counts a text without ``api_call`` as neither correct
  nor hallucinated, here ``unparseable``). ``ours``: the same, except that an answer with no
  ``api_call`` in its text (openfunctions and tool-call answers, or gorilla answers that renamed
  the field) is labelled by its first parsed call rendered as call text; ``source`` says which
  text was labelled (``api_call``, ``parsed_call`` or ``none``).
- BFCL, one label ``bfcl``: the parsed calls through BFCL's AST checker against the question's
  candidate functions and possible answers; a failed check whose calls name a function outside the
  candidates is a hallucination, any other failure an error (``detail``: BFCL's error type).
- Keys (OpenAPI and Python corpora), two labels from our own verdict: ``right_api`` (the first
  call matched a doc key that is the answer or an alternative) and ``right_api_valid_args`` (that,
  and the first call's verdict is ``valid``). These evaluators have no hallucination label: the
  only one would be our own ``unknown_api``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from apihelper.build.evaluation import gorilla_ast
from apihelper.build.evaluation.bfcl_ast import CheckOptions, check_bfcl
from apihelper.build.evaluation.calls import (
    STYLE_OF_FORMAT,
    AnswerStyle,
    bfcl_call,
    detect_style,
    read_answer,
    readable,
    render_call,
)
from apihelper.build.evaluation.questions import ApibenchGold, BfclGold, Gold, KeyGold, Question, SetKind
from apihelper.build.evaluation.verdicts import AnswerVerdict, catalog_for, check_locally
from apihelper.errors import InvalidRequestError
from apihelper.service.answers.check import ApiCatalog
from apihelper.service.answers.parse import ParsedAnswer, ParsedCall
from apihelper.service.prompts import PromptFormat


class Outcome(str, enum.Enum):
    CORRECT = "correct"
    HALLUCINATION = "hallucination"
    ERROR = "error"
    UNPARSEABLE = "unparseable"
    FAILED = "failed"


@dataclass(frozen=True)
class Label:
    outcome: Outcome
    detail: str = ""  # what decided it: the matched record, BFCL's error type, the matched key
    source: str = ""  # APIBench "ours": which text was labelled
    has_hallucination: bool = True  # whether this evaluator labels hallucinations at all


Labels = dict[str, Label]

_GORILLA_OUTCOMES = {
    gorilla_ast.Outcome.CORRECT: Outcome.CORRECT,
    gorilla_ast.Outcome.ERROR: Outcome.ERROR,
    gorilla_ast.Outcome.HALLUCINATION: Outcome.HALLUCINATION,
    gorilla_ast.Outcome.NO_API_CALL: Outcome.UNPARSEABLE,
}


BFCL_STRICT = CheckOptions()  # BFCL's own reading of names and schema types
APIBENCH_LABELS = ("gorilla", "ours")
BFCL_LABELS = ("bfcl",)
KEY_LABELS = ("right_api", "right_api_valid_args")


def _gorilla(label: gorilla_ast.GorillaLabel, database: gorilla_ast.ApiDatabase, source: str) -> Label:
    index = label.matched_index
    detail = database.records[index].api_call if index is not None else (label.api_call or "")
    return Label(_GORILLA_OUTCOMES[label.outcome], detail, source)


def score_apibench(text: str, answer: ParsedAnswer, gold: ApibenchGold, database: gorilla_ast.ApiDatabase) -> Labels:
    faithful = gorilla_ast.label_answer(text, database, gold.domain)
    gorilla = _gorilla(faithful, database, "api_call" if faithful.api_call is not None else "none")
    if faithful.api_call is not None:
        return {"gorilla": gorilla, "ours": gorilla}
    calls = readable(answer.calls)
    if not calls:
        return {"gorilla": gorilla, "ours": Label(Outcome.UNPARSEABLE, "no call could be read", "none")}
    rendered = render_call(calls[0])
    ours = _gorilla(gorilla_ast.label_call(rendered, database, gold.domain), database, "parsed_call")
    return {"gorilla": gorilla, "ours": ours}


def _outside(calls: Sequence[ParsedCall], gold: BfclGold, options: CheckOptions) -> list[str]:
    """Names of calls that are none of the candidate functions (as the checker compares names)."""
    names = {str(f.get("name", "")) for f in gold.functions}
    if options.underscore_to_dot:
        names = {n.replace(".", "_") for n in names}
    return [c.name for c in calls if c.name not in names]


def score_bfcl(answer: ParsedAnswer, gold: BfclGold, options: CheckOptions = BFCL_STRICT) -> Labels:
    calls = readable(answer.calls)
    if not calls:
        problem = next((c.problem for c in answer.calls if c.problem), "no call could be read")
        return {"bfcl": Label(Outcome.UNPARSEABLE, problem)}
    try:
        result = check_bfcl(
            [bfcl_call(c) for c in calls],
            gold.functions,
            gold.ground_truth,
            gold.category,
            underscore_to_dot=options.underscore_to_dot,
            json_schema_types=options.json_schema_types,
        )
    except ValueError as exc:  # the question's own data is inconsistent: not the answer's fault
        return {"bfcl": Label(Outcome.FAILED, f"cannot check: {exc}")}
    if result.valid:
        return {"bfcl": Label(Outcome.CORRECT)}
    unknown = _outside(calls, gold, options)
    if unknown:
        return {"bfcl": Label(Outcome.HALLUCINATION, f"not a candidate function: {', '.join(unknown)}")}
    return {"bfcl": Label(Outcome.ERROR, result.error_type or "")}


def score_keys(verdict: AnswerVerdict, gold: KeyGold) -> Labels:
    first = verdict.first
    if first is None:
        return {name: Label(Outcome.UNPARSEABLE, verdict.verdict, has_hallucination=False) for name in KEY_LABELS}
    right = first.matched_key in gold.keys
    detail = first.matched_key or f"{first.name} ({first.verdict})"
    right_api = Label(Outcome.CORRECT if right else Outcome.ERROR, detail, has_hallucination=False)
    valid = right and first.verdict == "valid"
    with_args = Label(
        Outcome.CORRECT if valid else Outcome.ERROR,
        detail if valid or not right else f"{detail}: {first.verdict}",
        has_hallucination=False,
    )
    return {"right_api": right_api, "right_api_valid_args": with_args}


def label_names(gold: Gold) -> tuple[str, ...]:
    if isinstance(gold, ApibenchGold):
        return APIBENCH_LABELS
    return BFCL_LABELS if isinstance(gold, BfclGold) else KEY_LABELS


def failed(gold: Gold, why: str) -> Labels:
    """A ``failed`` label under each of the gold's label names."""
    keys = isinstance(gold, KeyGold)
    return {name: Label(Outcome.FAILED, why, has_hallucination=not keys) for name in label_names(gold)}


# ---------------------------------------------------------------------------------------------- one answer


def default_style(kind: SetKind, fmt: PromptFormat | None) -> AnswerStyle:
    """How to read an answer without markers: the prompt format's style, else the set's usual one."""
    if fmt is not None:
        return STYLE_OF_FORMAT[fmt]
    return AnswerStyle.FUNCTIONS if kind is SetKind.BFCL else AnswerStyle.GORILLA


@dataclass(frozen=True)
class ScoringContext:
    """What scoring needs beyond the question: Gorilla's API database (APIBench), the corpora to
    check answers against where the service gave no verdict, and BFCL's checker options."""

    database: gorilla_ast.ApiDatabase | None = None
    catalogs: Mapping[str, ApiCatalog] = field(default_factory=dict)
    bfcl: CheckOptions = BFCL_STRICT


@dataclass(frozen=True)
class ScoredAnswer:
    style: AnswerStyle
    answer: ParsedAnswer
    verdict: AnswerVerdict | None  # ours: the service's, or computed here; None where neither could be
    labels: Labels


_NO_ANSWER = ParsedAnswer({}, [])


def score_answer(
    question: Question,
    text: str | None,
    style_hint: AnswerStyle,
    context: ScoringContext,
    served: AnswerVerdict | None = None,
) -> ScoredAnswer:
    """Read ``text`` (None: there is no answer), take or compute our verdict, and label it."""
    if text is None:
        return ScoredAnswer(style_hint, _NO_ANSWER, served, failed(question.gold, "no answer"))
    style = detect_style(text, style_hint)
    answer = read_answer(text, style)
    verdict = served
    if verdict is None:
        catalog = catalog_for(context.catalogs, question.corpus)
        verdict = check_locally(answer, catalog) if catalog is not None else None
    gold = question.gold
    if isinstance(gold, ApibenchGold):
        if context.database is None:
            raise InvalidRequestError("--api-db", "APIBench questions are scored against the API database")
        labels = score_apibench(text, answer, gold, context.database)
    elif isinstance(gold, BfclGold):
        labels = score_bfcl(answer, gold, context.bfcl)
    elif verdict is None:
        labels = failed(gold, f"no docs for corpus {question.corpus!r} to match the call to a key")
    else:
        labels = score_keys(verdict, gold)
    return ScoredAnswer(style, answer, verdict, labels)


__all__ = [
    "APIBENCH_LABELS",
    "BFCL_LABELS",
    "KEY_LABELS",
    "Label",
    "Labels",
    "Outcome",
    "ScoredAnswer",
    "ScoringContext",
    "default_style",
    "failed",
    "label_names",
    "score_answer",
    "score_apibench",
    "score_bfcl",
    "score_keys",
]
