"""Split manifests: cut reproducibly, disjoint, ids only, and checked against their sources."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from apihelper.bench.retrieval.make_splits import SEED, all_manifests, cut
from apihelper.bench.retrieval.splits import SPLITS_DIR, SplitError, load_split, read_manifest
from tests.support import SHARED_CORPORA, shared_corpus

SETS = ("backendai_rest", "backendai_functional", "torchhub", "bfcl_live_multiple", "bfcl_multiple")


def test_cut_is_seeded_disjoint_and_complete() -> None:
    ids = [f"q{i}" for i in range(25)]
    parts = cut(ids, [0.4, 0.2, 0.4], random.Random("s"))
    assert [len(p) for p in parts] == [10, 5, 10]
    assert sorted(qid for part in parts for qid in part) == sorted(ids)
    assert parts == cut(ids, [0.4, 0.2, 0.4], random.Random("s"))
    with pytest.raises(ValueError, match="sum to 1"):
        cut(ids, [0.5, 0.2], random.Random("s"))


@pytest.mark.parametrize("name", SETS)
def test_committed_manifest_holds_disjoint_ids_and_no_text(name: str) -> None:
    raw = json.loads((SPLITS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    splits = raw["splits"]
    assert set(splits) == {"train", "validation", "test"}
    assert raw["seed"] == SEED
    seen = [qid for ids in splits.values() for qid in ids]
    assert len(seen) == len(set(seen))
    assert all(isinstance(qid, str) and len(qid) < 40 for qid in seen)  # ids, not questions
    assert raw["sizes"] == {k: len(v) for k, v in splits.items()}


def test_committed_manifests_are_what_make_splits_writes() -> None:
    shared_corpus("bfcl")
    for manifest in all_manifests(SHARED_CORPORA):
        committed = json.loads((SPLITS_DIR / f"{manifest['set']}.json").read_text(encoding="utf-8"))
        assert committed == json.loads(json.dumps(manifest))


def test_load_split_returns_manifest_order_and_refuses_a_changed_source(tmp_path: Path) -> None:
    shared_corpus("backend.ai", "dev_questions.jsonl")
    questions = load_split("backendai_rest", "train", SHARED_CORPORA)
    assert [q.id for q in questions] == read_manifest("backendai_rest").splits["train"]
    assert all(q.answers for q in questions)
    copy = tmp_path / "corpora"
    (copy / "backend.ai").mkdir(parents=True)
    source = SHARED_CORPORA / "backend.ai" / "dev_questions.jsonl"
    shutil.copy(source, copy / "backend.ai" / "dev_questions.jsonl")
    with (copy / "backend.ai" / "dev_questions.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("\n")
    with pytest.raises(SplitError, match="changed"):
        load_split("backendai_rest", "train", copy)
    with pytest.raises(SplitError, match="no split"):
        load_split("backendai_rest", "dev", SHARED_CORPORA)
