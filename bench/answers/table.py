"""The policies table of docs/answers.md from bench/answers/policies.sh's output: per set and
policy, the right-API rate (eval-answers' ``right_api`` label, or each label it gives) beside
the retriever's top-1 on the same questions (Backend.AI sets: the first source is the answer or
an alternative), and our verdicts.

    .venv/bin/python bench/answers/table.py DATA_DIR [QUESTIONS_JSONL]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _gold(questions: Path | None) -> dict[str, set[str]]:
    if questions is None or not questions.is_file():
        return {}
    out: dict[str, set[str]] = {}
    for line in questions.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        out[str(q["id"])] = {str(q["answer"]), *map(str, q.get("alt_answers") or [])}
    return out


def _top1(rows: list[dict[str, Any]], gold: dict[str, set[str]]) -> str:
    known = [r for r in rows if r["id"] in gold]
    if not known:
        return "-"
    hits = sum(1 for r in known if r.get("sources") and r["sources"][0] in gold[r["id"]])
    return f"{hits / len(known):.3f}"


def main(argv: list[str]) -> int:
    data = Path(argv[1])
    gold = _gold(Path(argv[2]) if len(argv) > 2 else None)
    print("| set | policy | n | label: correct rate | retriever top-1 | our verdicts |")
    print("| --- | --- | --- | --- | --- | --- |")
    for summary_path in sorted(data.glob("*.summary.json")):
        name = summary_path.name.removesuffix(".summary.json")
        set_name, _, policy = name.rpartition("-")
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        labels = ", ".join(f"{k} {v['rates']['correct']:.3f}" for k, v in summary["labels"].items())
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items(), key=lambda kv: -kv[1]))
        print(f"| {set_name} | {policy} | {summary['n']} | {labels} | {_top1(rows, gold)} | {verdicts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
