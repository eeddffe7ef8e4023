"""Gorilla's AST answer evaluator for APIBench (TorchHub, HuggingFace, TensorFlow Hub), as pure functions.

A faithful re-implementation of ``gorilla/eval/eval-scripts/ast_eval_th.py``, ``ast_eval_hf.py`` and
``ast_eval_tf.py`` (ShishirPatil/gorilla, Apache-2.0), including their quirks, so that our figures can
be compared with the published ones. The rules, each with the function of the original it mirrors:

- ``cut_api_call`` (``process_response`` / ``main``): the api_call is the text between the first
  ``"api_call"`` and the next ``"api_provider"``, from the first ``":"`` + 2 (or index 2 when there
  is no ``":"``) to the last ``")"`` inclusive (or up to the last character, excluded, when there is
  no ``")"``). Without ``"api_call"`` TorchHub labels the answer neither correct nor hallucinated
  (``Outcome.NO_API_CALL``); HuggingFace and TensorFlow Hub parse the whole text instead.
- ``_sub_trees`` (``get_all_sub_trees``): the answer is parsed with tree-sitter's error-tolerant Python
  grammar; the sub-trees are the root and every node with children, in stack order (children pushed
  left to right, so popped right to left); a sub-tree's head is the text of its first child.
- ``ApiDatabase`` (``parse_dataset``, ``ast_check``, ``get_args``): a record's function name is the
  head of the first statement's first node (records where that node has no children are skipped);
  its key arguments are taken from that call's argument list, per hub (see ``_key_argument``), with
  single quotes stripped from both ends; records without key arguments are skipped.
- ``match_api`` (``ast_check``): the first record, in database order, whose key arguments all occur in
  the text of the first sub-tree headed by the record's function name. When no sub-tree has that
  head, the original's loop variable is left on the *last* sub-tree, and that one is tested.
- ``label_answer`` / ``score`` (``main``): a match whose record domain equals the gold domain is
  correct; no match is a hallucination; any other match is an error. Rates are over all answers.
- ``label_responses`` (``main``): the gold domain of a response is that of question ``question_id - 1``
  (0-based) of the eval file; a response without ``text`` counts as neither correct nor hallucinated,
  and still counts in the denominator.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tree_sitter_python
from tree_sitter import Language, Node, Parser

__all__ = [
    "ApiDatabase",
    "ApiRecord",
    "GorillaLabel",
    "GorillaScore",
    "Hub",
    "Outcome",
    "cut_api_call",
    "label_answer",
    "label_call",
    "label_responses",
    "match_api",
    "read_jsonl",
    "score",
]


class Hub(enum.Enum):
    """The APIBench hub; it decides which call arguments are keys and how an answer is cut."""

    TORCHHUB = "torchhub"
    HUGGINGFACE = "huggingface"
    TENSORFLOWHUB = "tensorflowhub"


class Outcome(enum.Enum):
    """Gorilla's label for one answer."""

    CORRECT = "correct"
    ERROR = "error"
    HALLUCINATION = "hallucination"
    NO_API_CALL = "no_api_call"


@dataclass(frozen=True)
class ApiRecord:
    """One API database record as the matcher sees it."""

    domain: str
    api_call: str
    function_name: bytes | None
    """Head of the record's call; None when Gorilla skips the record (``ast_check``'s first test)."""
    key_arguments: tuple[str, ...]
    """Quote-stripped argument texts that must all occur in the answer's sub-tree; empty: skipped."""

    @property
    def matchable(self) -> bool:
        """Whether ``ast_check`` can ever return this record."""
        return self.function_name is not None and bool(self.key_arguments)


@dataclass(frozen=True)
class _SubTree:
    head: bytes | None
    text: bytes


@functools.cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_python.language()))


def _parse(code: str) -> Node:
    return _parser().parse(code.encode("utf-8")).root_node


def _text(node: Node) -> bytes:
    return node.text or b""


def _nth_child(node: Node, index: int) -> Node | None:
    children = node.children
    return children[index] if len(children) > index else None


def _key_argument(argument: Node, hub: Hub) -> bytes | None:
    """The key text of one child of a record's argument list, or None when it is not a key (``get_args``).

    TorchHub: a child whose text contains ``repo_or_dir`` or ``model`` gives its third child (the value
    of ``name=value``). HuggingFace: a child containing ``=`` gives its third child; any other child that
    is not ``(``, ``)`` or ``,`` gives its whole text. TensorFlow Hub: like HuggingFace, but only
    ``model=`` / ``model =`` selects the third child, so ``trainable=True`` is kept whole.
    """
    text = _text(argument).decode("utf-8")
    if hub is Hub.TORCHHUB:
        takes_value = "repo_or_dir" in text or "model" in text
        keeps_whole = False
    elif hub is Hub.HUGGINGFACE:
        takes_value = "=" in text
        keeps_whole = text not in ("(", ")", ",")
    else:
        takes_value = "model=" in text or "model =" in text
        keeps_whole = text not in ("(", ")", ",")
    if takes_value:
        value = _nth_child(argument, 2)
        if value is None:
            raise ValueError(f"argument {text!r} has no value node (Gorilla's get_args raises IndexError here)")
        return _text(value)
    return _text(argument) if keeps_whole else None


def _record(entry: Mapping[str, object], hub: Hub) -> ApiRecord:
    api_call = str(entry["api_call"])
    domain = str(entry["domain"])
    statement = _nth_child(_parse(api_call), 0)
    call = _nth_child(statement, 0) if statement is not None else None
    function = _nth_child(call, 0) if call is not None else None
    if call is None or function is None:
        return ApiRecord(domain, api_call, None, ())
    argument_list = _nth_child(call, 1)
    arguments = argument_list.children if argument_list is not None else []
    keys = (_key_argument(argument, hub) for argument in arguments)
    stripped = tuple(key.decode("utf-8").strip("'") for key in keys if key is not None)
    return ApiRecord(domain, api_call, _text(function), stripped)


@dataclass(frozen=True)
class ApiDatabase:
    """The API records of one hub, in file order (the order decides which record matches first)."""

    hub: Hub
    records: tuple[ApiRecord, ...]

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, object]], hub: Hub) -> ApiDatabase:
        """Build from APIBench records (each with at least ``api_call`` and ``domain``)."""
        return cls(hub, tuple(_record(entry, hub) for entry in entries))

    @classmethod
    def from_jsonl(cls, path: Path | str, hub: Hub) -> ApiDatabase:
        """Read an APIBench ``*_api.jsonl`` file (one JSON record a line)."""
        return cls.from_entries(read_jsonl(path), hub)


@dataclass(frozen=True)
class GorillaLabel:
    """Gorilla's verdict on one answer."""

    outcome: Outcome
    matched_index: int | None
    """Index of the matched database record, or None (hallucination, no api_call)."""
    api_call: str | None
    """The text that was parsed: the cut api_call, or None when there was none (TorchHub)."""


def cut_api_call(text: str, hub: Hub) -> str | None:
    """The api_call part of an answer, cut exactly as Gorilla cuts it (see the module docstring)."""
    parts = text.split("api_call")
    if len(parts) == 1:
        return None if hub is Hub.TORCHHUB else text
    segment = parts[1].split("api_provider")[0]
    start = segment.index(":") if ":" in segment else 0
    end = segment.rindex(")") if ")" in segment else -2
    return segment[start + 2 : end + 1]


def _sub_trees(root: Node) -> list[_SubTree]:
    """The root and every node with children, in ``get_all_sub_trees``'s stack order."""
    found: list[_SubTree] = []
    stack = [root]
    while stack:
        node = stack.pop()
        first = _nth_child(node, 0)
        found.append(_SubTree(_text(first) if first is not None else None, _text(node)))
        stack.extend(child for child in node.children if child.child_count > 0)
    return found


def _sub_tree_for(sub_trees: Sequence[_SubTree], function_name: bytes) -> _SubTree:
    """The first sub-tree headed by ``function_name``; else the last one (the original's loop fall-through)."""
    return next((tree for tree in sub_trees if tree.head == function_name), sub_trees[-1])


def match_api(api_call: str, database: ApiDatabase) -> int | None:
    """Index of the first record whose key arguments all occur in the matching sub-tree (``ast_check``)."""
    sub_trees = _sub_trees(_parse(api_call))
    for index, record in enumerate(database.records):
        if record.function_name is None or not record.key_arguments:
            continue
        tree = _sub_tree_for(sub_trees, record.function_name)
        if all(key.encode("utf-8") in tree.text for key in record.key_arguments):
            return index
    return None


def label_answer(text: str, database: ApiDatabase, gold_domain: str | None) -> GorillaLabel:
    """Label one answer text against the database and the question's gold domain."""
    api_call = cut_api_call(text, database.hub)
    if api_call is None:
        return GorillaLabel(Outcome.NO_API_CALL, None, None)
    return label_call(api_call, database, gold_domain)


def label_call(api_call: str, database: ApiDatabase, gold_domain: str | None) -> GorillaLabel:
    """Label an api_call text already cut out of its answer (the part of ``main`` after the cut)."""
    index = match_api(api_call, database)
    if index is None:
        return GorillaLabel(Outcome.HALLUCINATION, None, api_call)
    correct = gold_domain is not None and database.records[index].domain == gold_domain
    return GorillaLabel(Outcome.CORRECT if correct else Outcome.ERROR, index, api_call)


@dataclass(frozen=True)
class GorillaScore:
    """Counts over a response file, and Gorilla's rates (every rate is over all ``n`` answers)."""

    n: int
    n_correct: int
    n_hallucination: int
    n_error: int
    n_no_api_call: int

    @property
    def accuracy(self) -> float:
        """Gorilla's "Final Functionality accuracy": correct / all answers."""
        return self.n_correct / self.n

    @property
    def hallucination(self) -> float:
        """Gorilla's "Final hallucination": hallucinated / all answers."""
        return self.n_hallucination / self.n

    @property
    def error(self) -> float:
        """The paper's error column, 1 - accuracy - hallucination: wrong matches and answers without api_call."""
        return (self.n_error + self.n_no_api_call) / self.n


def score(labels: Iterable[GorillaLabel]) -> GorillaScore:
    """Count labels into a ``GorillaScore``; an empty input has no score."""
    outcomes = [label.outcome for label in labels]
    if not outcomes:
        raise ValueError("no labels to score")
    return GorillaScore(
        n=len(outcomes),
        n_correct=outcomes.count(Outcome.CORRECT),
        n_hallucination=outcomes.count(Outcome.HALLUCINATION),
        n_error=outcomes.count(Outcome.ERROR),
        n_no_api_call=outcomes.count(Outcome.NO_API_CALL),
    )


def label_responses(
    responses: Iterable[Mapping[str, Any]], gold_domains: Sequence[str], database: ApiDatabase
) -> list[GorillaLabel]:
    """Label Gorilla response records (``question_id``, ``text``) against gold domains indexed by question."""
    labels = []
    for response in responses:
        text = response.get("text")
        if not isinstance(text, str):
            labels.append(GorillaLabel(Outcome.NO_API_CALL, None, None))
            continue
        labels.append(label_answer(text, database, gold_domains[int(response["question_id"]) - 1]))
    return labels


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Read a JSON-lines file (APIBench's ``*.json`` eval files are JSON lines too)."""
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
