"""Issue 25 row 16: one invalid corpus name among valid ones is that corpus's problem. The real
``apihelper-build ingest`` (subprocess, Milvus Lite, the MiniLM embedder) ingests the others,
names the bad one in one line and exits 3 (partial)."""

from __future__ import annotations

from pathlib import Path

from apihelper.retriever.milvus_store import MilvusStore
from tests.integration.test_ingest_hostile import BUILD, GOOD_SPEC, run_ingest
from tests.support import budget


def test_an_invalid_corpus_name_does_not_stop_the_others(tmp_path: Path) -> None:
    spec = tmp_path / "zoo.yaml"
    spec.write_text(GOOD_SPEC)
    db = tmp_path / "milvus.db"
    bad = ["Zoo", "zoo-2", "zoo\n", "1zoo", "z" * 64]
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(db)]
    for name in [bad[0], "zoo", *bad[1:], "zoo_two"]:
        args += ["--corpus", f"{name}={spec}"]
    run = run_ingest(args, timeout_s=budget(240))
    assert run.returncode == 3, run.stdout + run.stderr[-4000:]
    refused = [line for line in run.stderr.splitlines() if "invalid corpus name" in line]
    assert len(refused) == len(bad), run.stderr
    assert "Traceback" not in run.stderr
    store = MilvusStore(str(db))
    try:
        assert sorted(c.name for c in store.list_corpora()) == ["zoo", "zoo_two"]
    finally:
        store.close()
