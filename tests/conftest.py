"""Shared fixtures: where ../shared corpora are, and the cost-heavy session-wide artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def shared_corpus(*parts: str) -> Path:
    """A file under ../shared/corpora, or skip the test saying what is missing."""
    path = SHARED_CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the third-party corpora in ../shared/corpora")
    return path


@pytest.fixture(scope="session")
def dev_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's development model, built once per test session."""
    from engine_build.dev_model import make_dev_model
    from retriever.loaders import load_corpus
    from retriever.samples import sample_corpus_path

    out = tmp_path_factory.mktemp("dev-model")
    _, loaded = load_corpus(sample_corpus_path(), None)
    make_dev_model(out, (d.text for d in loaded.docs))
    return out
