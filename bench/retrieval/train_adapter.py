"""Recipe of the bundled query adapter: the train splits, written out, fed to ``train-embedder``.

    .venv/bin/python bench/retrieval/train_adapter.py [--out retriever/models/query_adapter.npz]

Writes the *train* split of every question set (bench/retrieval/splits/) as a JSONL question file
named ``<set>.train.jsonl`` into a temporary directory, builds the BFCL function corpora there
(bfcl_corpus.py), prints the ``apihelper-build train-embedder`` command line it runs, and runs it.
Validation and test questions are never read. Corpora: rest = backend.ai/openapi.json;
functional = the whole 24.3.0 client wheel (the functional questions' answers live in it, and so
does every other document a user ingesting the wheel would have); torchhub; the two BFCL pools.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from apihelper.bench.retrieval import bfcl_corpus
from apihelper.bench.retrieval.splits import load_split

ROOT = Path(__file__).resolve().parents[2]

SHARED = ROOT.parent / "shared" / "corpora"
DEFAULT_OUT = ROOT / "retriever" / "models" / "query_adapter.npz"

# corpus name -> (corpus path or built file name, built?)
CORPORA = {
    "rest": (SHARED / "backend.ai" / "openapi.json", False),
    "functional": (SHARED / "backend.ai" / "backend.ai_client-24.3.0-py3-none-any.whl", False),
    "torchhub": (SHARED / "apibench" / "torchhub_api.jsonl", False),
    "bfcl_live_multiple": (Path("BFCL_v4_live_multiple.functions.jsonl"), True),
    "bfcl_multiple": (Path("BFCL_v4_multiple.functions.jsonl"), True),
}
# manifest -> (corpus, BFCL file whose built questions it names)
SETS = {
    "backendai_rest": ("rest", None),
    "backendai_functional": ("functional", None),
    "torchhub": ("torchhub", None),
    "bfcl_live_multiple": ("bfcl_live_multiple", "BFCL_v4_live_multiple"),
    "bfcl_multiple": ("bfcl_multiple", "BFCL_v4_multiple"),
}


def command_line(out: Path, directory: Path) -> list[str]:
    """Write the train questions and BFCL corpora into ``directory``; the train-embedder argv."""
    for stem in bfcl_corpus.SETS:
        bfcl_corpus.write_set(SHARED / "bfcl", stem, directory)
    argv = ["train-embedder", "--out", str(out)]
    for name, (path, built) in CORPORA.items():
        argv += ["--corpus", f"{name}={directory / path if built else path}"]
    for manifest, (corpus, bfcl) in SETS.items():
        questions = load_split(
            manifest, "train", SHARED, bfcl_questions=directory / f"{bfcl}.questions.jsonl" if bfcl else None
        )
        path = directory / f"{manifest}.train.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for q in questions:
                record = {
                    "id": q.id,
                    "question": q.question,
                    "answer": q.answers[0],
                    "alt_answers": list(q.answers[1:]),
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        argv += ["--questions", f"{corpus}={path}"]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from apihelper.build.cli import main as build_main

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apihelper-adapter-") as tmp:
        command = command_line(args.out, Path(tmp))
        print("apihelper-build " + shlex.join(command), file=sys.stderr)
        try:
            build_main(command)
        except SystemExit as exit_:
            return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
