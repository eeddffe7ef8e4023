"""Our own verdict on an answer, as the evaluation reads it: from the live service's completion or,
for answers produced elsewhere, from the same checker run here against docs loaded from files.

The verdict is the service's (:mod:`apihelper.service.answers.check`): ``valid``,
``ungrounded``, ``wrong_arguments``, ``unknown_api``, ``unparseable``, ``unchecked``. Answers scored from a file were
never retrieved for, so they are checked against the whole corpus only (a call to a real API is
then valid or wrong_arguments with the note that it was not retrieved, as in the service).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from apihelper.errors import CorpusLoadError
from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.types import CorpusFormat
from apihelper.service.answers.check import ApiCatalog, CheckedAnswer, Verdict, check_parsed
from apihelper.service.answers.parse import ParsedAnswer

VERDICTS = tuple(v.value for v in Verdict)


@dataclass(frozen=True)
class CallVerdict:
    name: str
    matched_key: str
    verdict: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnswerVerdict:
    verdict: str  # the worst of the calls' verdicts
    calls: tuple[CallVerdict, ...]

    @property
    def first(self) -> CallVerdict | None:
        """The answer's first call, when one was read."""
        return next((c for c in self.calls if c.name), None)


def from_checked(checked: CheckedAnswer) -> AnswerVerdict:
    calls = tuple(CallVerdict(c.call.name, c.doc_key, c.verdict.value, c.reasons) for c in checked.checks)
    return AnswerVerdict(checked.verdict.value, calls)


def check_locally(answer: ParsedAnswer, catalog: ApiCatalog) -> AnswerVerdict:
    """The service's verdict on ``answer`` against a whole corpus (no retrieved docs)."""
    return from_checked(check_parsed(answer, [], catalog))


@dataclass(frozen=True)
class DocSpec:
    """A corpus to check answers against: ``NAME=PATH[:FORMAT]``, as ``ingest --corpus`` takes it."""

    name: str
    path: Path
    fmt: CorpusFormat | None = None


def load_catalogs(specs: Sequence[DocSpec], include: Sequence[str] = ()) -> dict[str, ApiCatalog]:
    """One catalog per corpus name; raises CorpusLoadError when a corpus yields no docs."""
    catalogs: dict[str, ApiCatalog] = {}
    for spec in specs:
        _, result = load_corpus(spec.path, spec.fmt, include=list(include) or None)
        if not result.docs:
            problems = "; ".join(p.message for p in result.problems[:3])
            raise CorpusLoadError(str(spec.path), f"no API docs loaded{': ' + problems if problems else ''}")
        catalogs[spec.name] = ApiCatalog(result.docs).prepare()
    return catalogs


def catalog_for(catalogs: Mapping[str, ApiCatalog], corpus: str | None) -> ApiCatalog | None:
    """The catalog of a question's corpus; the only one when there is one and the question names none."""
    if corpus is not None and corpus in catalogs:
        return catalogs[corpus]
    if corpus is None and len(catalogs) == 1:
        return next(iter(catalogs.values()))
    return None


__all__ = [
    "VERDICTS",
    "AnswerVerdict",
    "CallVerdict",
    "DocSpec",
    "catalog_for",
    "check_locally",
    "from_checked",
    "load_catalogs",
]
