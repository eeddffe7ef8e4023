"""The committed split manifests (``bench/retrieval/splits/*.json``) and the questions they name.

A manifest lists ids per split plus each source file's sha256 (``make_splits.py`` wrote them);
:func:`load_split` checks the hashes, so a changed source file is an error rather than a silent
re-split, and returns the questions of one split in manifest order, as
:class:`retriever.evaluate.EvalQuestion`. Question ids: Backend.AI and BFCL ids as in their files;
TorchHub ``train-N`` / ``eval-N`` for 1-based line N of torchhub_train.json / torchhub_eval.json.
BFCL questions come from the files ``bfcl_corpus.py`` builds (pass their directory).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.retriever.evaluate import EvalQuestion, parse_question

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SPLIT_NAMES = ("train", "validation", "test")


class SplitError(Exception):
    """A manifest that is missing, names a split it lacks, or whose sources changed."""


@dataclass(frozen=True)
class Manifest:
    name: str
    splits: dict[str, list[str]]
    sources: list[dict[str, str]]


def read_manifest(name: str, directory: Path = SPLITS_DIR) -> Manifest:
    path = directory / f"{name}.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SplitError(f"cannot read split manifest {path}: {exc}") from exc
    return Manifest(str(raw["set"]), {k: list(v) for k, v in raw["splits"].items()}, list(raw["sources"]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_sources(manifest: Manifest, corpora: Path) -> None:
    """Raise SplitError when a source file is missing or differs from the one the split was cut from."""
    for source in manifest.sources:
        path = corpora / source["file"]
        if not path.is_file():
            raise SplitError(f"{manifest.name}: source {path} is missing")
        if _sha256(path) != source["sha256"]:
            raise SplitError(f"{manifest.name}: {path} changed since the split was made (sha256 differs)")


def _jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _numbered(path: Path, prefix: str) -> dict[str, EvalQuestion]:
    out: dict[str, EvalQuestion] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            qid = f"{prefix}-{number}"
            out[qid] = parse_question(json.loads(line), qid)
    return out


def questions_by_id(manifest: Manifest, corpora: Path, bfcl_questions: Path | None) -> dict[str, EvalQuestion]:
    """Every question a manifest's sources hold, by the ids the manifest uses."""
    files = [corpora / s["file"] for s in manifest.sources]
    if manifest.name == "torchhub":
        by_id: dict[str, EvalQuestion] = {}
        for path, prefix in zip(files, ("train", "eval"), strict=True):
            by_id.update(_numbered(path, prefix))
        return by_id
    if manifest.name.startswith("bfcl_"):
        if bfcl_questions is None:
            raise SplitError(f"{manifest.name}: needs the questions file bfcl_corpus.py builds")
        records = _jsonl(bfcl_questions)
    else:
        records = _jsonl(files[0])
    return {str(r["id"]): parse_question(r, str(r["id"])) for r in records}


def load_split(
    name: str,
    split: str,
    corpora: Path,
    *,
    bfcl_questions: Path | None = None,
    directory: Path = SPLITS_DIR,
) -> list[EvalQuestion]:
    """The questions of ``split`` of manifest ``name``, in manifest order; raises SplitError."""
    manifest = read_manifest(name, directory)
    if split not in manifest.splits:
        raise SplitError(f"{name} has no split {split!r} (has {sorted(manifest.splits)})")
    check_sources(manifest, corpora)
    by_id = questions_by_id(manifest, corpora, bfcl_questions)
    missing = [qid for qid in manifest.splits[split] if qid not in by_id]
    if missing:
        raise SplitError(f"{name}/{split}: {len(missing)} ids not in the sources, e.g. {missing[0]}")
    return [by_id[qid] for qid in manifest.splits[split]]


__all__ = ["SPLITS_DIR", "SPLIT_NAMES", "Manifest", "SplitError", "check_sources", "load_split", "read_manifest"]
