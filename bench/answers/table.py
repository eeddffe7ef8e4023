"""The policies table of docs/answers.md from bench/answers/policies.sh's output: per set and
policy, the right-API rate beside the retriever's top-1 on the same questions, the set's own
accuracy labels (BFCL's AST checker, Gorilla's AST rule), and our verdicts.

Right API: the answer's first call resolves (our verdict's ``matched_key``) to a gold key of the
question; retriever top-1: the first retrieved doc is a gold key. Gold keys come from the question
files given (any format eval-answers reads): the answer and its alternatives (Backend.AI, and
BFCL's ``bfcl_corpus`` questions, whose answers are the pooled corpus' keys), an APIBench
record's ``api_call``.

    .venv/bin/python bench/answers/table.py DATA_DIR [QUESTIONS ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from apihelper.build.evaluation.questions import ApibenchGold, KeyGold, load_questions


def _gold(paths: list[Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in paths:
        for q in load_questions(path):
            if isinstance(q.gold, KeyGold):
                out[q.id] = set(q.gold.keys)
            elif isinstance(q.gold, ApibenchGold):
                out[q.id] = {q.gold.api_call}
    return out


def _rate(rows: list[dict[str, Any]], gold: dict[str, set[str]], key: str) -> str:
    known = [r for r in rows if r["id"] in gold]
    if not known:
        return "-"
    if key == "top1":
        hits = sum(1 for r in known if r.get("sources") and r["sources"][0] in gold[r["id"]])
    else:
        hits = sum(1 for r in known if r.get("api_calls") and r["api_calls"][0].get("matched_key") in gold[r["id"]])
    return f"{hits / len(known):.3f}"


def main(argv: list[str]) -> int:
    data = Path(argv[1])
    gold = _gold([Path(p) for p in argv[2:] if Path(p).is_file()])
    print("| set | policy | n | right API | retriever top-1 | set's labels: correct rate | our verdicts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for summary_path in sorted(data.glob("*.summary.json")):
        name = summary_path.name.removesuffix(".summary.json")
        set_name, _, policy = name.rpartition("-")
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        labels = ", ".join(f"{k} {v['rates']['correct']:.3f}" for k, v in summary["labels"].items())
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items(), key=lambda kv: -kv[1]))
        right, top1 = _rate(rows, gold, "right"), _rate(rows, gold, "top1")
        print(f"| {set_name} | {policy} | {summary['n']} | {right} | {top1} | {labels} | {verdicts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
