"""bench/retrieval/lodo.py: the numpy shortcut scores settings exactly as retriever.fusion.fuse
ranks, the leave-one-distribution-out choice never looks at the held-out set, and a fold's query
adapter never saw it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from apihelper.bench.retrieval.lodo import (
    DEV_SETS,
    Candidates,
    choose,
    fast_score,
    fold_adapters,
    fused_ranking,
    never_below_rrf,
)
from apihelper.build.train_embedder import Recipe, TrainingSet, train_matrix
from apihelper.retriever.evaluate import EvalQuestion, RankScore, rank_score
from apihelper.retriever.fusion import Fusion, FusionMethod

FUSIONS = [
    Fusion(FusionMethod.ZSCORE, 0.0, candidates=100),
    Fusion(FusionMethod.ZSCORE, 1.0, candidates=100),
    Fusion(FusionMethod.ZSCORE, 0.25, candidates=50),
    Fusion(FusionMethod.ZSCORE, 0.55, candidates=5),
    Fusion(FusionMethod.RRF, 0.5, 60.0, 100),
    Fusion(FusionMethod.RRF, 0.3, 2.0, 7),
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fusion", FUSIONS, ids=str)
def test_fast_score_agrees_with_fuse(seed: int, fusion: Fusion) -> None:
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(40)]
    questions, dense, keyword = [], [], []
    for n in range(30):
        d = sorted(((k, rng.uniform(0.1, 0.9)) for k in rng.sample(keys, rng.randint(0, 20))), key=lambda p: -p[1])
        kw = sorted(((k, rng.uniform(0.5, 30.0)) for k in rng.sample(keys, rng.randint(0, 20))), key=lambda p: -p[1])
        questions.append(EvalQuestion(id=str(n), question="q", answers=(rng.choice(keys),)))
        dense.append(d)
        keyword.append(kw)
    slow = rank_score(questions, [fused_ranking(d, k, fusion) for d, k in zip(dense, keyword, strict=True)])
    fast = fast_score(Candidates.of(questions, dense, keyword), fusion)
    assert fast.n == slow.n
    assert fast.top1 == pytest.approx(slow.top1)
    assert fast.top5 == pytest.approx(slow.top5)
    assert fast.mrr10 == pytest.approx(slow.mrr10)


def test_choose_looks_only_at_the_sets_it_is_given() -> None:
    def s(top1: float) -> dict[str, RankScore]:
        return {"dev": RankScore(10, top1, top1, top1), "test": RankScore(10, 0.0, 0.0, 0.0)}

    results = {"a": {"x": s(0.9), "y": s(0.1)}, "b": {"x": s(0.5), "y": s(0.6)}}
    assert choose(results, ["x"]) == "a"
    assert choose(results, ["y"]) == "b"
    assert choose(results, ["x", "y"]) == "b"  # mean 0.55 against 0.5
    assert choose(results, ["x"], among=["b"]) == "b"


def _training_set(name: str, seed: int) -> TrainingSet:
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        m = rng.normal(size=(n, 8)).astype(np.float32)
        return np.asarray(m / np.linalg.norm(m, axis=1, keepdims=True), dtype=np.float32)

    docs = unit(6)
    return TrainingSet(name, unit(5), [[int(i)] for i in rng.integers(0, 6, size=5)], docs)


def test_a_fold_adapter_is_trained_without_its_held_out_set() -> None:
    training = {name: _training_set(name, seed) for seed, name in enumerate(("a", "b", "c"))}
    recipe = Recipe(epochs=5)
    folds = fold_adapters(training, recipe)
    assert set(folds) == {"fold-a", "fold-b", "fold-c"}
    # The same matrix as training on the other sets alone (deterministic), not the one that saw it.
    assert np.array_equal(folds["fold-a"], train_matrix([training["b"], training["c"]], recipe))
    assert not np.allclose(folds["fold-a"], train_matrix(list(training.values()), recipe))


def test_never_below_rrf_reads_every_held_out_set() -> None:
    def score(top1: float) -> RankScore:
        return RankScore(10, top1, top1, top1)

    sets = DEV_SETS
    plain = {"plain RRF": {s: {"test": score(0.5)} for s in sets}}
    # Setting "x" is level everywhere; "y" is one question below on the last set only, as the
    # held-out set's own fold sees it (another fold's figures for that set do not count).
    blind = {
        held: {
            "x": {s: {"test": score(0.5)} for s in sets},
            "y": {s: {"test": score(0.4 if s == held == sets[-1] else 0.6)} for s in sets},
        }
        for held in sets
    }
    assert never_below_rrf(blind, plain, ["x", "y"]) == ["x"]
