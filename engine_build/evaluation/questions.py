"""Question sets for ``eval-answers``: what each question asks and what its gold answer is.

Three kinds of set, told apart by their first line (or named with ``--set``):

- ``keys``: the project's question format, ``{"id", "question", "answer", "alt_answers", "corpus"}``
  (Backend.AI's dev_questions.jsonl). The gold is a doc key: ``"METHOD /path"`` or a Python
  qualified name; an answer is right when its first call matches one of the keys.
- ``apibench``: APIBench lines (torchhub_eval.json, torchhub_train.json): the question is the
  instruction inside ``code``; the gold is ``api_data``'s domain and api_call. Gorilla's own
  question ids are 1-based line numbers; ours are ``<prefix>-N`` with the prefix the file name's
  last ``_`` part (``eval-N``, ``train-N``), as the split manifests name them.
- ``bfcl``: BFCL v4 lines ``{"id", "question": [[{"role", "content"}...]...], "function"}`` with
  their ``possible_answer`` file (BFCL's layout: ``possible_answer/<same name>`` beside it). The
  question is the text of the user turns (system turns left out), newline-joined.

A split manifest (``{"splits": {"train": [ids], "validation": [...], "test": [...]}, "sources":
[{"file", "sha256"}]}``, or the lists at the top level) selects questions by id, in manifest
order. When a manifest source has the question file's name, its sha256 must match: a split cut
from another version of the file is refused rather than silently mis-selected.

Everything here reads files and returns typed values; errors are :class:`CorpusLoadError` (a file
that cannot be read, a bad line) or :class:`InvalidRequestError` (a flag that does not fit).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.build.evaluation.bfcl_ast import Category, category_of
from apihelper.errors import CorpusLoadError, InvalidRequestError
from apihelper.retriever.evaluate import collapse, instruction_of

SPLITS = ("train", "validation", "test")


class SetKind(str, enum.Enum):
    KEYS = "keys"
    APIBENCH = "apibench"
    BFCL = "bfcl"


@dataclass(frozen=True)
class KeyGold:
    """Doc keys that count as the right API (the answer first, then its aliases)."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class ApibenchGold:
    domain: str
    api_call: str


@dataclass(frozen=True)
class BfclGold:
    """The question's candidate functions and BFCL's accepted calls (``possible_answer``)."""

    functions: tuple[Mapping[str, Any], ...]
    ground_truth: tuple[Mapping[str, Mapping[str, Sequence[Any]]], ...]
    category: Category


Gold = KeyGold | ApibenchGold | BfclGold


@dataclass(frozen=True)
class Question:
    id: str
    number: int  # 1-based line of its file (Gorilla's question_id)
    text: str  # the instruction a user would send
    gold: Gold
    corpus: str | None = None  # the corpus the question belongs to, where the file says

    @property
    def kind(self) -> SetKind:
        if isinstance(self.gold, KeyGold):
            return SetKind.KEYS
        return SetKind.APIBENCH if isinstance(self.gold, ApibenchGold) else SetKind.BFCL


# ---------------------------------------------------------------------------------------------- reading


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of each non-blank line; CorpusLoadError names a bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusLoadError(str(path), f"cannot read: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusLoadError(f"{path}:{number}", f"not JSON: {exc}") from exc


def kind_of_record(record: Any) -> SetKind | None:
    """Which kind of set a question line belongs to, or None when it is none of them."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("question"), list) and isinstance(record.get("function"), list):
        return SetKind.BFCL
    if "code" in record and isinstance(record.get("api_data"), dict):
        return SetKind.APIBENCH
    if "question" in record and "answer" in record:
        return SetKind.KEYS
    return None


def detect_kind(path: Path) -> SetKind:
    for _, record in _json_lines(path):
        kind = kind_of_record(record)
        if kind is None:
            raise CorpusLoadError(str(path), f"the first line (keys {sorted(record)[:8]}) is no known question format")
        return kind
    raise CorpusLoadError(str(path), "no questions")


def user_text(turns: Any) -> str:
    """The user turns' contents of a BFCL ``question`` (a list of turns, each a list of messages)."""
    texts: list[str] = []
    for turn in turns if isinstance(turns, list) else []:
        for message in turn if isinstance(turn, list) else [turn]:
            if isinstance(message, Mapping) and message.get("role") == "user":
                texts.append(str(message.get("content", "")).strip())
    return "\n".join(t for t in texts if t)


def _keys_question(record: Mapping[str, Any], number: int) -> Question:
    keys = [str(record["answer"]), *(str(a) for a in record.get("alt_answers") or [])]
    corpus = record.get("corpus")
    return Question(
        id=str(record.get("id", number)),
        number=number,
        text=str(record["question"]),
        gold=KeyGold(tuple(dict.fromkeys(keys))),
        corpus=str(corpus) if corpus else None,
    )


def _apibench_question(record: Mapping[str, Any], number: int, prefix: str) -> Question:
    data = record["api_data"]
    api_call = data.get("api_call") or record.get("api_call")
    text = instruction_of(str(record.get("code", "")))
    if not isinstance(api_call, str) or not text:
        raise ValueError("no instruction in 'code' or no api_data.api_call")
    return Question(
        id=str(record.get("id", f"{prefix}-{number}")),
        number=number,
        text=text,
        gold=ApibenchGold(str(data.get("domain", "")), collapse(api_call)),
    )


def _bfcl_question(record: Mapping[str, Any], number: int, truth: Mapping[str, Any]) -> Question:
    qid = str(record["id"])
    if qid not in truth:
        raise ValueError(f"{qid} has no entry in the possible_answer file")
    gold = BfclGold(
        functions=tuple(record["function"]),
        ground_truth=tuple(truth[qid]),
        category=category_of(qid),
    )
    return Question(id=qid, number=number, text=user_text(record["question"]), gold=gold)


def possible_answer_path(questions: Path) -> Path:
    """BFCL's layout: ``possible_answer/<the question file's name>`` beside the question file."""
    return questions.parent / "possible_answer" / questions.name


def read_possible_answers(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorpusLoadError(str(path), "BFCL possible_answer file not found (give it with --possible-answer)")
    return {str(r["id"]): r["ground_truth"] for _, r in _json_lines(path) if isinstance(r, dict) and "id" in r}


def load_questions(path: Path, kind: SetKind | None = None, *, possible_answer: Path | None = None) -> list[Question]:
    """Every question of ``path`` (of ``kind``, detected when None), in file order."""
    kind = kind or detect_kind(path)
    truth = read_possible_answers(possible_answer or possible_answer_path(path)) if kind is SetKind.BFCL else {}
    prefix = path.stem.rsplit("_", 1)[-1]
    questions: list[Question] = []
    for number, record in _json_lines(path):
        if kind_of_record(record) is not kind:
            raise CorpusLoadError(f"{path}:{number}", f"not a {kind.value} question line")
        try:
            if kind is SetKind.KEYS:
                questions.append(_keys_question(record, number))
            elif kind is SetKind.APIBENCH:
                questions.append(_apibench_question(record, number, prefix))
            else:
                questions.append(_bfcl_question(record, number, truth))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusLoadError(f"{path}:{number}", f"bad {kind.value} question: {exc}") from exc
    if not questions:
        raise CorpusLoadError(str(path), "no questions")
    return questions


# ---------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitManifest:
    splits: Mapping[str, tuple[str, ...]]
    sources: tuple[tuple[str, str], ...]  # (file as the manifest names it, sha256)


def read_manifest(path: Path) -> SplitManifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusLoadError(str(path), f"cannot read split manifest: {exc}") from exc
    lists = raw.get("splits", raw) if isinstance(raw, dict) else None
    if not isinstance(lists, dict):
        raise CorpusLoadError(str(path), "a split manifest is a JSON object of id lists")
    splits = {name: tuple(str(i) for i in ids) for name, ids in lists.items() if isinstance(ids, list)}
    sources = tuple(
        (str(s["file"]), str(s["sha256"]))
        for s in raw.get("sources", [])
        if isinstance(s, dict) and "file" in s and "sha256" in s
    )
    return SplitManifest(splits, sources)


def check_source(manifest: SplitManifest, manifest_path: Path, questions_path: Path) -> None:
    """Refuse a question file whose name a manifest source has but whose content differs."""
    digest = ""
    for name, sha256 in manifest.sources:
        if Path(name).name == questions_path.name:
            digest = digest or hashlib.sha256(questions_path.read_bytes()).hexdigest()
            if digest != sha256:
                raise CorpusLoadError(
                    str(questions_path), f"differs from the file {manifest_path} was cut from (sha256 {sha256[:12]}...)"
                )


def select_split(
    questions: Sequence[Question], manifest: SplitManifest, split: str, *, manifest_path: Path
) -> list[Question]:
    """The questions of one split, in manifest order; every id must be among ``questions``."""
    if split not in manifest.splits:
        raise InvalidRequestError("--split", f"{manifest_path} has no split {split!r} (has {sorted(manifest.splits)})")
    by_id = {q.id: q for q in questions}
    ids = manifest.splits[split]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InvalidRequestError(
            "--split",
            f"{len(missing)} of the {len(ids)} ids of {split!r} in {manifest_path} are not in the question file "
            f"(e.g. {missing[0]!r}): is it the file the split was made from?",
        )
    return [by_id[i] for i in ids]


__all__ = [
    "SPLITS",
    "ApibenchGold",
    "BfclGold",
    "Gold",
    "KeyGold",
    "Question",
    "SetKind",
    "SplitManifest",
    "check_source",
    "detect_kind",
    "kind_of_record",
    "load_questions",
    "possible_answer_path",
    "read_manifest",
    "select_split",
    "user_text",
]
