"""Split every question set into train / validation / test once, and write one manifest per set.

    .venv/bin/python bench/retrieval/make_splits.py [--corpora ../shared/corpora] [--out bench/retrieval/splits]

A manifest holds ids only (never question text), the seed, the ratios, and each source file's name
and sha256, so a changed source is noticed instead of silently re-split. The split is a seeded
shuffle of the ids in file order, cut by the ratios (rounded, test taking the remainder); where a
file holds several strata (Backend.AI's ``corpus`` field) each stratum is cut on its own.

Sets and rules:

- ``backendai_rest`` / ``backendai_functional``: backend.ai/dev_questions.jsonl by its ``corpus``
  field, 0.4 / 0.2 / 0.4 (tiny sets: a 10-question test split says more than a 5-question one);
- ``torchhub``: test = APIBench's own eval questions (apibench/torchhub_eval.json, ids
  ``eval-N``, N the 1-based line number as in Gorilla's response files); train / validation =
  apibench/torchhub_train.json lines (``train-N``), 0.8 / 0.2;
- ``bfcl_live_multiple`` / ``bfcl_multiple`` / ``bfcl_parallel_multiple`` / ``bfcl_simple_java`` /
  ``bfcl_simple_javascript``: bfcl/BFCL_v4_*.json by ``id``, 0.6 / 0.2 / 0.2.

Run once; the manifests are committed and every benchmark reads them. Re-running with the same
seed and sources reproduces them byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SEED = 20261201
SPLITS = ("train", "validation", "test")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPORA = ROOT.parent / "shared" / "corpora"
DEFAULT_OUT = Path(__file__).resolve().parent / "splits"
# (BFCL file stem, manifest name); the last three were added later: cutting them did not touch
# the first two manifests (each set has its own seeded generator).
BFCL_FILES = (
    ("BFCL_v4_live_multiple", "bfcl_live_multiple"),
    ("BFCL_v4_multiple", "bfcl_multiple"),
    ("BFCL_v4_parallel_multiple", "bfcl_parallel_multiple"),
    ("BFCL_v4_simple_java", "bfcl_simple_java"),
    ("BFCL_v4_simple_javascript", "bfcl_simple_javascript"),
)


@dataclass(frozen=True)
class Source:
    """One file a set's ids come from."""

    path: Path
    role: str  # which splits it feeds: "all", "train+validation" or "test"

    def manifest_entry(self, corpora: Path) -> dict[str, str]:
        return {
            "file": self.path.relative_to(corpora).as_posix(),
            "sha256": sha256_of(self.path),
            "feeds": self.role,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cut(ids: Sequence[str], ratios: Sequence[float], rng: random.Random) -> list[list[str]]:
    """``ids`` shuffled with ``rng`` and cut into len(ratios) parts (the last takes the rest).

    Each part but the last gets round(ratio * n) ids; parts keep the shuffled order.
    """
    if abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"ratios {ratios} do not sum to 1")
    shuffled = list(ids)
    rng.shuffle(shuffled)
    parts: list[list[str]] = []
    start = 0
    for ratio in ratios[:-1]:
        size = round(ratio * len(shuffled))
        parts.append(shuffled[start : start + size])
        start += size
    parts.append(shuffled[start:])
    return parts


def jsonl_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def line_ids(path: Path, prefix: str) -> list[str]:
    """``prefix-N`` for each non-blank line N (1-based) of a JSONL file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{prefix}-{number}" for number, line in enumerate(lines, start=1) if line.strip()]


def manifest(
    name: str,
    sources: Sequence[Source],
    corpora: Path,
    ratios: dict[str, object],
    splits: dict[str, list[str]],
    note: str,
    seed: int,
) -> dict[str, object]:
    return {
        "set": name,
        "seed": seed,
        "ratios": ratios,
        "sources": [s.manifest_entry(corpora) for s in sources],
        "note": note,
        "sizes": {split: len(splits[split]) for split in SPLITS},
        "splits": {split: splits[split] for split in SPLITS},
    }


def backendai_manifests(corpora: Path, seed: int) -> list[dict[str, object]]:
    source = Source(corpora / "backend.ai" / "dev_questions.jsonl", "all")
    ratios: dict[str, object] = {"train": 0.4, "validation": 0.2, "test": 0.4}
    out = []
    for stratum, name in (("rest", "backendai_rest"), ("functional", "backendai_functional")):
        ids = [str(r["id"]) for r in jsonl_records(source.path) if r.get("corpus") == stratum]
        rng = random.Random(f"{seed}:{name}")
        train, validation, test = cut(ids, [0.4, 0.2, 0.4], rng)
        out.append(
            manifest(
                name,
                [source],
                corpora,
                ratios,
                {"train": train, "validation": validation, "test": test},
                f"questions of dev_questions.jsonl whose corpus is {stratum!r}",
                seed,
            )
        )
    return out


def torchhub_manifest(corpora: Path, seed: int) -> dict[str, object]:
    train_source = Source(corpora / "apibench" / "torchhub_train.json", "train+validation")
    eval_source = Source(corpora / "apibench" / "torchhub_eval.json", "test")
    ratios: dict[str, object] = {"train": 0.8, "validation": 0.2}
    rng = random.Random(f"{seed}:torchhub")
    train, validation = cut(line_ids(train_source.path, "train"), [0.8, 0.2], rng)
    test = line_ids(eval_source.path, "eval")
    return manifest(
        "torchhub",
        [train_source, eval_source],
        corpora,
        {**ratios, "test": "all of torchhub_eval.json"},
        {"train": train, "validation": validation, "test": test},
        "train-N / eval-N: 1-based line N of torchhub_train.json / torchhub_eval.json",
        seed,
    )


def bfcl_manifests(corpora: Path, seed: int) -> list[dict[str, object]]:
    ratios: dict[str, object] = {"train": 0.6, "validation": 0.2, "test": 0.2}
    out = []
    for stem, name in BFCL_FILES:
        source = Source(corpora / "bfcl" / f"{stem}.json", "all")
        ids = [str(r["id"]) for r in jsonl_records(source.path)]
        rng = random.Random(f"{seed}:{name}")
        train, validation, test = cut(ids, [0.6, 0.2, 0.2], rng)
        out.append(
            manifest(
                name,
                [source],
                corpora,
                ratios,
                {"train": train, "validation": validation, "test": test},
                f"ids of {stem}.json",
                seed,
            )
        )
    return out


def all_manifests(corpora: Path, seed: int = SEED) -> list[dict[str, object]]:
    return [*backendai_manifests(corpora, seed), torchhub_manifest(corpora, seed), *bfcl_manifests(corpora, seed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for item in all_manifests(args.corpora.resolve(), args.seed):
        path = args.out / f"{item['set']}.json"
        path.write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")
        print(f"{path}: {item['sizes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
