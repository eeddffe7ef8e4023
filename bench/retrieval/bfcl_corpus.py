"""Build a function-schema corpus and retrieval questions from a BFCL question file.

    .venv/bin/python bench/retrieval/bfcl_corpus.py --bfcl ../shared/corpora/bfcl --out /tmp/bfcl \\
        [--set BFCL_v4_live_multiple]

BFCL lines carry their candidate functions with every question. Pooled over a file, those are a
tool corpus: ``<set>.functions.jsonl`` holds each distinct (name, description) definition once,
first occurrence kept as written (BFCL shape, ``"type": "dict"``), in file order, so the loader
(``retriever.loaders.function_schema``) gives the bare name to the first definition of a name
and ``name#<hash>`` to the others. ``<set>.questions.jsonl`` holds one retrieval question per
BFCL line: ``{"id", "question", "answer", "alt_answers"}`` with the question = the text of the
user turns (system turns left out), answer = the key of the ground-truth call's function as the
question listed it (matched by name among that line's functions), alt_answers = the keys of
further ground-truth calls, if any, and of the other definitions with the answer's name
(``name#<hash>`` twins): BFCL's checker judges a call by its function name and argument values,
so a twin with the same name, retrieved and shown to the model, leads to the same correct call.

Third-party data: write the outputs to a temporary or scratch directory, never into the repository.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.build.evaluation.questions import user_text
from apihelper.retriever.loaders.function_schema import assign_keys

ROOT = Path(__file__).resolve().parents[2]

SETS = (
    "BFCL_v4_live_multiple",
    "BFCL_v4_multiple",
    "BFCL_v4_parallel_multiple",
    "BFCL_v4_simple_java",
    "BFCL_v4_simple_javascript",
)


@dataclass(frozen=True)
class BuiltSet:
    functions: list[dict[str, Any]]  # pooled definitions, as written
    questions: list[dict[str, Any]]  # {"id", "question", "answer", "alt_answers"}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pooled_definitions(lines: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct (name, description) definition of the lines' ``function`` lists, first kept."""
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    for line in lines:
        for function in line.get("function") or []:
            pair = (str(function["name"]), str(function.get("description", "")))
            if pair not in seen:
                seen.add(pair)
                out.append(function)
    return out


def ground_truth_names(answer: Mapping[str, Any]) -> list[str]:
    """The function names of a possible_answer line's calls, in order."""
    return [name for call in answer.get("ground_truth") or [] for name in call]


def build(lines: Sequence[Mapping[str, Any]], answers: Mapping[str, Mapping[str, Any]]) -> BuiltSet:
    """The pooled corpus and the retrieval questions of one BFCL file (see the module docstring).

    Raises KeyError for a line without an answer, ValueError for a ground-truth function that
    the line does not list.
    """
    functions = pooled_definitions(lines)
    pairs = [(str(f["name"]), str(f.get("description", ""))) for f in functions]
    key_of = dict(zip(pairs, assign_keys(pairs), strict=True))
    keys_of_name: dict[str, list[str]] = {}
    for (name, _), key in key_of.items():
        keys_of_name.setdefault(name, []).append(key)
    questions: list[dict[str, Any]] = []
    for line in lines:
        listed = {str(f["name"]): str(f.get("description", "")) for f in line.get("function") or []}
        names = ground_truth_names(answers[str(line["id"])])
        if not names:
            raise ValueError(f"{line['id']}: no ground-truth call")
        keys: list[str] = []
        for name in names:
            if name not in listed:
                raise ValueError(f"{line['id']}: ground-truth function {name!r} is not among its functions")
            keys.append(key_of[(name, listed[name])])
        twins = [twin for name in names for twin in keys_of_name[name]]
        unique = list(dict.fromkeys([*keys, *twins]))
        questions.append(
            {
                "id": str(line["id"]),
                "question": user_text(line.get("question")),
                "answer": unique[0],
                "alt_answers": unique[1:],
            }
        )
    return BuiltSet(functions, questions)


def build_file(bfcl_dir: Path, name: str) -> BuiltSet:
    lines = read_jsonl(bfcl_dir / f"{name}.json")
    answers = {str(a["id"]): a for a in read_jsonl(bfcl_dir / "possible_answer" / f"{name}.json")}
    return build(lines, answers)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_set(bfcl_dir: Path, name: str, out: Path) -> tuple[Path, Path]:
    """Write ``<name>.functions.jsonl`` and ``<name>.questions.jsonl`` under ``out``; returns both paths."""
    built = build_file(bfcl_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    corpus, questions = out / f"{name}.functions.jsonl", out / f"{name}.questions.jsonl"
    write_jsonl(corpus, built.functions)
    write_jsonl(questions, built.questions)
    return corpus, questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bfcl", type=Path, default=ROOT.parent / "shared" / "corpora" / "bfcl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", choices=SETS, help="default: all of them")
    args = parser.parse_args(argv)
    for name in args.set or SETS:
        corpus, questions = write_set(args.bfcl, name, args.out)
        print(f"{corpus} ({sum(1 for _ in corpus.open())} functions), {questions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
