"""Retrieval evaluation: question formats, metrics, and ``eval-retrieval`` end to end."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from apihelper.build.eval_cli import add_eval_parser
from apihelper.errors import CorpusLoadError
from apihelper.retriever.evaluate import (
    EvalQuestion,
    RankedAnswer,
    instruction_of,
    load_questions,
    parse_question,
    percentile,
    same_domain,
    score,
    write_ranked,
)

TORCHHUB_LINE = {
    "code": (
        "{'Instruction': I need an API that estimates depth from one image., 'Output': {'domain': "
        "'Classification', 'api_call': \"model = torch.hub.load('intel-isl/MiDaS', 'DPT_Hybrid')\"}}"
    ),
    "api_call": "torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Hybrid', pretrained=True)",
    "provider": "PyTorch",
    "api_data": {
        "domain": "Classification",
        "api_call": "torch.hub.load(repo_or_dir='intel-isl/MiDaS',   model='DPT_Hybrid', pretrained=True)",
    },
}


def test_instruction_is_taken_without_the_output() -> None:
    assert instruction_of(TORCHHUB_LINE["code"]) == "I need an API that estimates depth from one image."  # type: ignore[arg-type]
    assert instruction_of("###Instruction: Find a model\n for speech. ###Output: <<<domain>>>: x") == (
        "Find a model for speech."
    )
    assert (
        instruction_of("""{'Instruction': "Quoted text, with a comma", 'Output': {}}""") == "Quoted text, with a comma"
    )
    assert instruction_of("no instruction here") == ""


def test_parse_both_question_shapes() -> None:
    apibench = parse_question(TORCHHUB_LINE, "line-1")
    assert apibench.id == "line-1"
    assert apibench.answers == ("torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Hybrid', pretrained=True)",)
    assert apibench.domain == "Classification"
    assert "Output" not in apibench.question and "torch.hub" not in apibench.question
    plain = parse_question(
        {
            "id": "q1",
            "corpus": "rest",
            "question": "Make a folder",
            "answer": "POST /folders",
            "alt_answers": ["POST /f"],
        },
        "x",
    )
    assert plain == EvalQuestion("q1", "Make a folder", ("POST /folders", "POST /f"), None, "rest")
    with pytest.raises(ValueError):
        parse_question({"text": "nope"}, "x")


def test_load_questions_filters_by_corpus_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"id": "a", "corpus": "rest", "question": "q", "answer": "GET /a"},
                {"id": "b", "corpus": "functional", "question": "q", "answer": "m.f"},
                {"id": "c", "question": "q", "answer": "GET /c"},
            )
        )
        + "\n\n"
    )
    assert [q.id for q in load_questions(good, corpus="rest")] == ["a", "c"]
    assert len(load_questions(good)) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q", "answer": "x"}\n{not json\n')
    with pytest.raises(CorpusLoadError, match=r"bad\.jsonl:2"):
        load_questions(bad)
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text(json.dumps({"id": "a", "corpus": "rest", "question": "q", "answer": "GET /a"}) + "\n")
    with pytest.raises(CorpusLoadError, match="no questions"):
        load_questions(tagged, corpus="other")


def test_metrics_and_percentiles(tmp_path: Path) -> None:
    questions = [
        EvalQuestion("1", "q", ("A",), "Vision"),
        EvalQuestion("2", "q", ("B", "B2"), "Audio"),
        EvalQuestion("3", "q", ("C",), "Text-to-Speech"),
        EvalQuestion("4", "q", ("D",), "Vision"),
    ]
    answers = [
        RankedAnswer("1", ["A", "x"], ["vision", "x"], 0.010),  # hit at 1, domain (case-insensitive)
        RankedAnswer("2", ["x", "y", "B2"], ["Audio", "", ""], 0.020),  # alt answer at 3
        RankedAnswer("3", ["x"] * 5 + ["C"], ["Text-To-Speech"] + [""] * 5, 0.030),  # at 6: MRR only
        RankedAnswer("4", ["x"] * 10 + ["D"], ["Audio"] * 11, 0.040),  # beyond 10: miss
    ]
    report = score(questions, answers, corpus="c", mode="hybrid", k=11, doc_count=9)
    assert report.n == 4 and report.doc_count == 9
    assert report.top1 == pytest.approx(0.25)
    assert report.top5 == pytest.approx(0.5)
    assert report.mrr10 == pytest.approx((1 + 1 / 3 + 1 / 6) / 4)
    assert report.domain_top1 == pytest.approx(0.75)
    assert report.latency_p50_ms == pytest.approx(20.0) and report.latency_p99_ms == pytest.approx(40.0)
    data = report.to_json()
    assert set(data) >= {"top1", "top5", "mrr@10", "domain_top1", "latency_ms", "doc_count", "n"}
    assert percentile([], 50) == 0.0 and percentile([5.0], 99) == 5.0
    assert same_domain(" Text-to-Speech", "text-to-speech")
    out = tmp_path / "ranked.jsonl"
    write_ranked(out, answers[:1])
    assert json.loads(out.read_text()) == {"id": "1", "ranked": ["A", "x"]}


def test_eval_retrieval_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ingest the demo corpus, then run the registered eval-retrieval command on it."""
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.retriever.samples import sample_corpus_path

    uri = str(tmp_path / "milvus.db")
    store = MilvusStore(uri)
    try:
        ingest_corpus(store, Embedder(), "demo", sample_corpus_path(), progress=False)
    finally:
        store.close()
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "s1", "question": "Create a new session", "answer": "POST /sessions"})
        + "\n"
        + json.dumps(
            {"id": "s2", "question": "Upload a file into a folder", "answer": "POST /folders/{folder_name}/files"}
        )
        + "\n"
    )
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    ranked = tmp_path / "ranked.jsonl"
    args = parser.parse_args(
        [
            "eval-retrieval",
            "--milvus-uri",
            uri,
            "--corpus",
            "demo",
            "--questions",
            str(questions),
            "--k",
            "5",
            "--ranked-out",
            str(ranked),
        ]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and report["doc_count"] == 20 and report["mode"] == "hybrid"
    assert report["top5"] == 1.0 and report["top1"] >= 0.5
    assert report["latency_ms"]["p50"] > 0
    lines = [json.loads(line) for line in ranked.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["s1", "s2"] and all(len(line["ranked"]) == 5 for line in lines)

    missing = parser.parse_args(
        ["eval-retrieval", "--milvus-uri", uri, "--corpus", "nope", "--questions", str(questions)]
    )
    from apihelper.errors import UnknownCorpusError

    with pytest.raises(UnknownCorpusError):
        asyncio.run(_run(missing))


async def _run(args: argparse.Namespace) -> object:
    from apihelper.build.eval_cli import run_eval

    return await run_eval(args)


def _small_corpora(root: Path) -> dict[str, tuple[Path, list[dict[str, str]]]]:
    """One small corpus per non-OpenAPI format, with a question whose answer is one of its keys."""
    pkg = root / "cloudsdk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sessions.py").write_text(
        "class Session:\n"
        '    def create(self, image: str) -> None:\n        """Start a new compute session from an image."""\n'
        '    def destroy(self) -> None:\n        """Terminate the session and free its resources."""\n'
        'def list_images() -> list[str]:\n    """List the container images you can start."""\n'
    )
    jsonl = root / "docs.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps(d) + "\n"
            for d in (
                {
                    "id": "billing.invoice",
                    "title": "Download an invoice",
                    "text": "Download the PDF invoice of a month.",
                },
                {
                    "id": "billing.card",
                    "title": "Change the card",
                    "text": "Replace the credit card used for payments.",
                },
            )
        )
    )
    apibench = root / "api.jsonl"
    apibench.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in (
                {
                    "domain": "Classification",
                    "api_name": "resnet18",
                    "functionality": "Image classification",
                    "api_call": "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet18', pretrained=True)",
                    "description": "ResNet-18 image classifier trained on ImageNet",
                },
                {
                    "domain": "Text-to-Speech",
                    "api_name": "tacotron2",
                    "functionality": "Speech synthesis",
                    "api_call": "torch.hub.load(repo_or_dir='NVIDIA/DeepLearningExamples:torchhub', model='nvidia_tacotron2')",
                    "description": "Tacotron 2 turns text into a mel spectrogram for speech synthesis",
                },
            )
        )
    )
    return {
        "python": (
            pkg,
            [{"id": "p1", "question": "terminate my compute session", "answer": "cloudsdk.sessions.Session.destroy"}],
        ),
        "jsonl": (jsonl, [{"id": "j1", "question": "get last month's invoice as PDF", "answer": "billing.invoice"}]),
        "apibench": (
            apibench,
            [
                {
                    "id": "a1",
                    "question": "turn text into speech",
                    "answer": "torch.hub.load(repo_or_dir='NVIDIA/DeepLearningExamples:torchhub', model='nvidia_tacotron2')",
                }
            ],
        ),
    }


@pytest.mark.parametrize("fmt", ["python", "jsonl", "apibench"])
def test_eval_retrieval_on_every_corpus_format(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.retriever.types import CorpusFormat

    path, qs = _small_corpora(tmp_path)[fmt]
    uri = str(tmp_path / "milvus.db")
    store = MilvusStore(uri)
    try:
        ingest_corpus(store, Embedder(), fmt, path, CorpusFormat(fmt), progress=False)
    finally:
        store.close()
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in qs))
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval-retrieval", "--milvus-uri", uri, "--corpus", fmt, "--questions", str(questions)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1 and report["top1"] == 1.0, report
