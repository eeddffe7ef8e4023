"""The composition root owns every lifetime: a start-up that fails half-way releases what it built.

``serve`` opens the embedder and Milvus Lite (an embedded server: threads, a port and the data
directory's lock), then fails at the engine step. Nothing of Milvus Lite may be left: no thread
running its code, no child process, and the directory opens from another process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from apihelper.errors import ConfigurationError
from apihelper.retriever.ingest import ingest_corpus
from apihelper.retriever.milvus_store import MilvusStore
from apihelper.retriever.samples import sample_corpus_path
from apihelper.service.__main__ import serve
from apihelper.service.settings import Settings
from tests.support import FakeEmbedder


def _threads_in(package: str) -> list[str]:
    """Names of live threads whose stack runs code of ``package``."""
    frames = sys._current_frames()
    found = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            if f"/{package}/" in frame.f_code.co_filename:
                found.append(thread.name)
                break
            frame = frame.f_back
    return found


def _opens_from_another_process(db: Path) -> subprocess.CompletedProcess[str]:
    # Corpora are served under aliases of their versions' collections: both are listed.
    code = (
        "import sys; from pymilvus import MilvusClient; c = MilvusClient(sys.argv[1]); "
        "print(c.list_collections(), c.list_aliases())"
    )
    return subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=120)


async def test_a_start_up_failing_at_the_engine_leaves_no_milvus_lite_behind(tmp_path: Path) -> None:
    db = tmp_path / "milvus.db"
    store = MilvusStore(str(db))
    ingest_corpus(store, FakeEmbedder(), "demo", sample_corpus_path(), progress=False)
    store.close()
    assert not _threads_in("milvus_lite")
    children = {c.pid for c in psutil.Process().children(recursive=True)}  # earlier tests' (multiprocessing's tracker)

    settings = Settings(port=0, http_port=0, metrics_port=0, milvus_uri=str(db), model=str(tmp_path / "no-such-model"))
    # The engine step refuses: the model is missing (or, in the env pinned like the TensorRT-LLM
    # container, the transformers engine refuses transformers 4.x before it looks).
    with pytest.raises(ConfigurationError, match=r"no-such-model|needs transformers 5"):
        await serve(settings)

    assert not _threads_in("milvus_lite"), "a Milvus Lite server thread outlived the failed start-up"
    assert {c.pid for c in psutil.Process().children(recursive=True)} <= children
    other = _opens_from_another_process(db)
    assert other.returncode == 0, other.stderr[-2000:]
    assert "apihelper_demo" in other.stdout
