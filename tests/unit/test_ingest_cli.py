"""``apihelper-build ingest``'s exit statuses and limit flags, with Milvus and the embedder
replaced (the real thing runs in tests/integration/test_ingest_hostile.py): 0 all loaded, 3
when any file had a problem or a corpus was skipped, 2 when nothing was ingested or on an
internal error, which is one line (the traceback only with ``--verbose``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apihelper.build import cli
from apihelper.errors import CorpusLoadError
from apihelper.retriever import embedding, ingest, milvus_store
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.types import IngestReport, LoadProblem


class _Store:
    def __init__(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], outcome: Any, *extra: str
) -> tuple[int, str, list[Any]]:
    """Run the CLI over corpora ``a`` and ``b``; ``outcome(name)`` is what ingest_corpus does."""
    calls: list[Any] = []

    def fake_ingest(store: Any, embedder: Any, name: str, path: Path, fmt: Any, **kwargs: Any) -> IngestReport:
        calls.append(kwargs["limits"])
        result = outcome(name)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, IngestReport)
        return result

    monkeypatch.setattr(embedding, "Embedder", lambda: object())
    monkeypatch.setattr(milvus_store, "MilvusStore", _Store)
    monkeypatch.setattr(ingest, "ingest_corpus", fake_ingest)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--quiet", "--milvus-uri", "x.db", "--corpus", "a=a.json", "--corpus", "b=b.json", *extra])
    return int(exit_info.value.code or 0), capsys.readouterr().err, calls


def _report(name: str, problems: list[LoadProblem] | None = None) -> IngestReport:
    return IngestReport(corpus=name, added=1, updated=0, deleted=0, unchanged=0, problems=problems or [])


def test_clean_ingest_exits_0_with_the_default_limits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, calls = _run(monkeypatch, capsys, _report)
    assert code == 0, err
    assert calls == [DEFAULT_LIMITS, DEFAULT_LIMITS]


def test_a_file_problem_exits_3_and_names_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def outcome(name: str) -> IngestReport:
        return _report(
            name,
            [LoadProblem("a.json#GET /x", "skipped: too big (limit --max-ref-expansions=2000)")]
            if name == "a"
            else None,
        )

    code, err, _ = _run(monkeypatch, capsys, outcome)
    assert code == 3
    assert "problem in a.json#GET /x: skipped: too big (limit --max-ref-expansions=2000)" in err


def test_a_skipped_corpus_exits_3_and_nothing_ingested_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, _ = _run(
        monkeypatch,
        capsys,
        lambda n: CorpusLoadError(f"{n}.json", "values nested too deeply") if n == "a" else _report(n),
    )
    assert code == 3 and "a: not ingested: " in err
    code, err, _ = _run(monkeypatch, capsys, lambda n: CorpusLoadError(f"{n}.json", "nope"))
    assert code == 2


def test_an_internal_error_is_one_line_and_the_next_corpus_still_goes_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done: list[str] = []

    def outcome(name: str) -> Any:
        done.append(name)
        return RuntimeError("boom \ud800") if name == "a" else _report(name)

    code, err, _ = _run(monkeypatch, capsys, outcome)
    assert code == 2
    assert done == ["a", "b"]
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "a: not ingested: internal error: RuntimeError: boom \\ud800 (--verbose prints the traceback)"
    ]
    code, err, _ = _run(monkeypatch, capsys, outcome, "--verbose")
    assert code == 2 and "Traceback" in err and "RuntimeError: boom" in err


def test_limit_flags_reach_the_loaders(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, calls = _run(monkeypatch, capsys, _report, "--max-depth", "5", "--max-file-bytes", "1000")
    assert code == 0
    assert calls[0] == IngestLimits(max_depth=5, max_file_bytes=1000)


def test_a_limit_flag_must_be_a_positive_integer(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--milvus-uri", "x.db", "--corpus", "a=a.json", "--max-depth", "0"])
    assert exit_info.value.code == 2
    assert "--max-depth" in capsys.readouterr().err


def test_link_pairs_name_two_corpora_of_the_command() -> None:
    from apihelper.errors import ConfigurationError

    assert cli.link_partners(["a,b"], ["a", "b"]) == {"a": "b", "b": "a"}
    assert cli.link_partners([], ["a"]) == {}
    for bad in ("a", "a,a", "a,c", "a,b,c", ",b"):
        with pytest.raises(ConfigurationError):
            cli.link_partners([bad], ["a", "b"])


def test_link_and_views_flags_reach_ingest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from apihelper.retriever import loaders
    from apihelper.retriever.types import ApiDoc, LoadResult

    seen: dict[str, Any] = {}

    def fake_ingest(store: Any, embedder: Any, name: str, path: Path, fmt: Any, **kwargs: Any) -> IngestReport:
        seen[name] = (kwargs["views"], kwargs["linked"])
        return _report(name)

    doc = ApiDoc("k", "t", "x", "x")
    monkeypatch.setattr(loaders, "load_corpus", lambda path, fmt, **kw: (fmt, LoadResult([doc])))
    monkeypatch.setattr(embedding, "Embedder", lambda: object())
    monkeypatch.setattr(milvus_store, "MilvusStore", _Store)
    monkeypatch.setattr(ingest, "ingest_corpus", fake_ingest)
    argv = ["ingest", "--quiet", "--milvus-uri", "x.db", "--corpus", "a=a.json", "--corpus", "b=b.json"]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--link", "a,b"])
    assert seen == {"a": (True, ("b", [doc])), "b": (True, ("a", [doc]))}  # views on by default
    seen.clear()
    with pytest.raises(SystemExit):
        cli.main([*argv, "--no-views"])
    assert seen == {"a": (False, None), "b": (False, None)}
