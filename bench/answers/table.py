"""The policies table of docs/answers.md from bench/answers/policies.sh's output: per set and
policy, the right-API rate beside the retriever's top-1 on the same questions, the set's own
accuracy labels (BFCL's AST checker, Gorilla's AST rule), and our verdicts.

Right API: the answer's first call resolves (our verdict's ``matched_key``) to a gold key of the
question; retriever top-1: the first retrieved doc is a gold key. Gold keys come from the question
files given (any format eval-answers reads): the answer and its alternatives (Backend.AI, and
BFCL's ``bfcl_corpus`` questions, whose answers are the pooled corpus' keys). APIBench questions
(TorchHub) are judged by Gorilla's AST rule against the API database given with ``--api-db``
(the call, or the first retrieved record's api_call, matches a record of the question's domain):
for answers that is eval-answers' ``ours`` label.

    .venv/bin/python bench/answers/table.py DATA_DIR [QUESTIONS ...] [--api-db API_JSONL]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from apihelper.build.eval_answers_cli import hub_of
from apihelper.build.evaluation.gorilla_ast import ApiDatabase, Outcome, label_call
from apihelper.build.evaluation.questions import ApibenchGold, KeyGold, load_questions


def _gold(paths: list[Path]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Gold keys by question id, and APIBench questions' gold domains."""
    keys: dict[str, set[str]] = {}
    domains: dict[str, str] = {}
    for path in paths:
        for q in load_questions(path):
            if isinstance(q.gold, KeyGold):
                keys[q.id] = set(q.gold.keys)
            elif isinstance(q.gold, ApibenchGold):
                domains[q.id] = q.gold.domain
    return keys, domains


def _rates(
    rows: list[dict[str, Any]], keys: dict[str, set[str]], domains: dict[str, str], db: ApiDatabase | None
) -> tuple[str, str]:
    """(right API, retriever top-1) over the rows whose question has a gold."""
    right = top1 = n = 0
    for r in rows:
        first = r["sources"][0] if r.get("sources") else None
        called = r["api_calls"][0].get("matched_key") if r.get("api_calls") else None
        if r["id"] in keys:
            n += 1
            right += called in keys[r["id"]]
            top1 += first in keys[r["id"]]
        elif r["id"] in domains and db is not None:
            n += 1
            right += r["labels"].get("ours", {}).get("outcome") == "correct"
            top1 += first is not None and label_call(first, db, domains[r["id"]]).outcome is Outcome.CORRECT
    return (f"{right / n:.3f}", f"{top1 / n:.3f}") if n else ("-", "-")


def main(argv: list[str]) -> int:
    data = Path(argv[1])
    args = argv[2:]
    db = None
    if "--api-db" in args:
        at = args.index("--api-db")
        db_path = Path(args[at + 1])
        db = ApiDatabase.from_jsonl(db_path, hub_of(db_path, None))
        del args[at : at + 2]
    keys, domains = _gold([Path(p) for p in args if Path(p).is_file()])
    print("| set | policy | n | right API | retriever top-1 | set's labels: correct rate | our verdicts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for summary_path in sorted(data.glob("*.summary.json")):
        name = summary_path.name.removesuffix(".summary.json")
        set_name, _, policy = name.rpartition("-")
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        labels = ", ".join(f"{k} {v['rates']['correct']:.3f}" for k, v in summary["labels"].items())
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items(), key=lambda kv: -kv[1]))
        right, top1 = _rates(rows, keys, domains, db)
        print(f"| {set_name} | {policy} | {summary['n']} | {right} | {top1} | {labels} | {verdicts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
