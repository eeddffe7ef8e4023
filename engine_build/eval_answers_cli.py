"""``apihelper-build eval-answers``: score answers to a question set, asked live or read from a file.

    # ask a running service (the same Generate request a user sends), 4 streams at a time
    apihelper-build eval-answers --target localhost:50051 --questions dev_questions.jsonl \\
        --split-manifest splits/backendai_rest.json --split test --out answers.jsonl
    # score answers produced elsewhere (Gorilla's released TorchHub responses, for instance)
    apihelper-build eval-answers --answers response_torchhub_Gorilla_FT_0_shot.jsonl \\
        --questions apibench/torchhub_eval.json --api-db apibench/torchhub_api.jsonl

Question sets, scoring and the outputs: see :mod:`apihelper.build.evaluation` (questions, scoring,
report). The summary table goes to stdout, the progress bar to stderr; ``--out`` writes one JSON
line per question, ``--summary-json`` the summary. Exit status: 0 scored (failed calls are counted,
not fatal), 2 bad flags or unreadable inputs.

The command is registered by :func:`add_eval_answers_parser`; everything heavy (gRPC, tree-sitter,
the corpus loaders) is imported when it runs, so ``--help`` works anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apihelper.errors import InvalidRequestError

if TYPE_CHECKING:
    from apihelper.build.evaluation.gorilla_ast import ApiDatabase, Hub
    from apihelper.build.evaluation.questions import Question
    from apihelper.build.evaluation.report import QuestionResult
    from apihelper.build.evaluation.runner import Generation, RequestOptions
    from apihelper.build.evaluation.scoring import ScoringContext
    from apihelper.service.prompts import PromptFormat

SET_KINDS = ("keys", "apibench", "bfcl")
HUBS = ("torchhub", "huggingface", "tensorflowhub")
FORMATS = ("auto", "gorilla_v0", "openfunctions_v2", "chat_tools")
MODES = ("hybrid", "dense", "keyword", "none")


# ---------------------------------------------------------------------------------------------- inputs


def select_questions(args: argparse.Namespace) -> list[Question]:
    """The question file's questions (of ``--set``), narrowed by ``--split`` and ``--limit``."""
    from apihelper.build.evaluation.questions import (
        SetKind,
        check_source,
        load_questions,
        read_manifest,
        select_split,
    )

    if (args.split_manifest is None) != (args.split is None):
        raise InvalidRequestError("--split", "--split-manifest and --split go together")
    kind = SetKind(args.set) if args.set else None
    questions = load_questions(args.questions, kind, possible_answer=args.possible_answer)
    if args.split_manifest is not None:
        manifest = read_manifest(args.split_manifest)
        check_source(manifest, args.split_manifest, args.questions)
        questions = select_split(questions, manifest, args.split, manifest_path=args.split_manifest)
    if args.limit is not None:
        questions = questions[: args.limit]
    if not questions:
        raise InvalidRequestError("--limit", "no questions selected")
    return questions


def hub_of(path: Path, named: str | None) -> Hub:
    """``--hub``, or the hub an APIBench database file is named after (TorchHub otherwise)."""
    from apihelper.build.evaluation.gorilla_ast import Hub

    if named:
        return Hub(named)
    name = path.name.lower()
    if name.startswith("huggingface"):
        return Hub.HUGGINGFACE
    return Hub.TENSORFLOWHUB if name.startswith("tensorflow") else Hub.TORCHHUB


def scoring_context(args: argparse.Namespace, questions: Sequence[Question], *, local_verdicts: bool) -> ScoringContext:
    """Gorilla's database (APIBench questions), the corpora to check answers against (``--answers``:
    ``--docs``, and the API database itself when no docs are given), BFCL's options."""
    from apihelper.build.cli import parse_corpus_spec
    from apihelper.build.evaluation.bfcl_ast import CheckOptions
    from apihelper.build.evaluation.gorilla_ast import ApiDatabase
    from apihelper.build.evaluation.questions import SetKind
    from apihelper.build.evaluation.scoring import ScoringContext
    from apihelper.build.evaluation.verdicts import DocSpec, catalog_for, load_catalogs
    from apihelper.retriever.types import CorpusFormat

    kinds = {q.kind for q in questions}
    database: ApiDatabase | None = None
    if SetKind.APIBENCH in kinds:
        if args.api_db is None:
            raise InvalidRequestError(
                "--api-db", "APIBench questions are scored against the API database (e.g. torchhub_api.jsonl)"
            )
        database = ApiDatabase.from_jsonl(args.api_db, hub_of(args.api_db, args.hub))
    catalogs = {}
    if local_verdicts:
        specs = [DocSpec(*parse_corpus_spec(spec)) for spec in args.docs or []]
        if not specs and args.api_db is not None and SetKind.APIBENCH in kinds:
            specs = [DocSpec("apibench", args.api_db, CorpusFormat.APIBENCH)]
        catalogs = load_catalogs(specs, args.include or ())
        lacking = sorted(
            {str(q.corpus) for q in questions if q.kind is SetKind.KEYS and catalog_for(catalogs, q.corpus) is None}
        )
        if lacking:
            raise InvalidRequestError(
                "--docs",
                f"answers to questions of corpus {', '.join(lacking)} are matched to doc keys: give --docs NAME=PATH",
            )
    options = CheckOptions(underscore_to_dot=args.underscore_to_dot, json_schema_types=args.bfcl_json_schema_types)
    return ScoringContext(database=database, catalogs=catalogs, bfcl=options)


def request_options(args: argparse.Namespace) -> RequestOptions:
    from apihelper.build.evaluation.runner import RequestOptions

    return RequestOptions(
        mode=args.mode,
        top_k=args.top_k,
        prompt_format=args.format,
        corpora=tuple(args.corpus or ()),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        sampling_top_k=args.sampling_top_k,
        seed=args.seed,
        stop=tuple(args.stop or ()),
        constrain_calls={"on": True, "off": False}.get(args.constrain_calls),
        api_choice=args.api_choice,
    )


def _requested_format(args: argparse.Namespace) -> PromptFormat | None:
    from apihelper.service.prompts import PromptFormat

    return None if args.format == "auto" else PromptFormat(args.format)


# ---------------------------------------------------------------------------------------------- the two ways in


async def generate(args: argparse.Namespace, questions: Sequence[Question]) -> tuple[list[Generation], float]:
    from tqdm import tqdm

    from apihelper.build.evaluation.runner import ChannelOptions, ask_all, open_channel

    channel_options = ChannelOptions(
        target=args.target,
        tls=args.tls,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        token=args.token,
    )
    with tqdm(total=len(questions), desc="eval-answers", unit="q", disable=args.quiet, file=sys.stderr) as bar:
        failed = 0

        def done(generation: Generation) -> None:
            nonlocal failed
            failed += generation.error is not None
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)

        async with open_channel(channel_options) as channel:
            return await ask_all(
                channel,
                questions,
                request_options(args),
                concurrency=args.concurrency,
                timeout_s=args.timeout,
                metadata=channel_options.metadata(),
                on_done=done,
            )


def score_generations(
    questions: Sequence[Question], generations: Sequence[Generation], context: ScoringContext, fmt: PromptFormat | None
) -> list[QuestionResult]:
    from apihelper.build.evaluation.report import QuestionResult
    from apihelper.build.evaluation.scoring import default_style, score_answer

    results = []
    for question, generation in zip(questions, generations, strict=True):
        hint = default_style(question.kind, generation.prompt_format or fmt)
        scored = score_answer(question, generation.text, hint, context, served=generation.verdict)
        results.append(QuestionResult(question, generation.text, scored, generation))
    return results


def score_file(
    args: argparse.Namespace, questions: Sequence[Question], context: ScoringContext
) -> tuple[list[QuestionResult], list[str]]:
    from apihelper.build.evaluation.answers import match_answers, read_answers
    from apihelper.build.evaluation.report import QuestionResult
    from apihelper.build.evaluation.scoring import default_style, score_answer

    matched = match_answers(read_answers(args.answers), questions)
    notes = []
    missing = sum(q.id not in matched.by_question for q in questions)
    if missing:
        notes.append(f"{missing} question(s) have no answer line: counted as failed")
    if matched.unmatched and args.split_manifest is None and args.limit is None:
        notes.append(f"{len(matched.unmatched)} answer line(s) name no question: ignored (e.g. {matched.unmatched[0]})")
    fmt = _requested_format(args)
    results = []
    for question in questions:
        line = matched.by_question.get(question.id)
        text = line.text if line is not None else None
        scored = score_answer(question, text, default_style(question.kind, fmt), context)
        results.append(QuestionResult(question, text, scored))
    return results, notes


# ---------------------------------------------------------------------------------------------- the command


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def cmd_eval_answers(args: argparse.Namespace) -> int:
    from apihelper.build.evaluation.report import format_table, summarize

    if args.concurrency < 1:
        raise InvalidRequestError("--concurrency", "must be at least 1")
    questions = select_questions(args)
    context = scoring_context(args, questions, local_verdicts=args.answers is not None)
    notes: list[str] = []
    wall_s: float | None = None
    if args.target is not None:
        generations, wall_s = asyncio.run(generate(args, questions))
        results = score_generations(questions, generations, context, _requested_format(args))
    else:
        results, notes = score_file(args, questions, context)
    if any(q.kind.value == "apibench" for q in questions):
        notes.append("Gorilla's error column is error + unparseable + failed (rates are over all n)")
    summary = summarize(results, wall_s=wall_s, notes=notes)
    if args.out is not None:
        write_jsonl(args.out, [r.to_json() for r in results])
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    print(format_table(summary))
    return 0


def add_eval_answers_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval-answers`` on the main parser's subparsers (an argparse _SubParsersAction)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval-answers",
        help="score answers (Gorilla's AST rule, BFCL's checker, right API) asked live or read from a file",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--target", metavar="HOST:PORT", help="ask a running apihelper service (Generate over gRPC)")
    way.add_argument(
        "--answers", type=Path, metavar="FILE", help='score these answers: JSON lines {"id"|"question_id", "text"}'
    )

    q = p.add_argument_group("questions")
    q.add_argument("--questions", type=Path, required=True, help="the question file (JSON lines)")
    q.add_argument(
        "--set",
        choices=SET_KINDS,
        help="keys: {id,question,answer,alt_answers,corpus} (Backend.AI dev); apibench: torchhub_eval.json-style "
        "lines; bfcl: BFCL v4 (default: from the first line)",
    )
    q.add_argument("--possible-answer", type=Path, help="BFCL's possible_answer file (default: possible_answer/<name>)")
    q.add_argument("--split-manifest", type=Path, help="a split manifest: JSON with train/validation/test id lists")
    q.add_argument("--split", choices=("train", "validation", "test"), help="the split of --split-manifest to use")
    q.add_argument("--limit", type=int, help="only the first N selected questions")

    s = p.add_argument_group("scoring")
    s.add_argument("--api-db", type=Path, help="APIBench's API database for Gorilla's rule, e.g. torchhub_api.jsonl")
    s.add_argument("--hub", choices=HUBS, help="which of Gorilla's rules (default: from the --api-db file name)")
    s.add_argument(
        "--docs",
        action="append",
        metavar="NAME=PATH[:FORMAT]",
        help="--answers: corpora to check the answers against for our verdict, named as the questions' corpus "
        "(repeatable; as ingest --corpus takes them)",
    )
    s.add_argument("--include", action="append", metavar="MODULE_PREFIX", help="python --docs: only these modules")
    s.add_argument("--underscore-to-dot", action="store_true", help="BFCL: the model writes a_b for a.b")
    s.add_argument(
        "--bfcl-json-schema-types", action="store_true", help='BFCL: also accept "number"/"object" schema types'
    )

    r = p.add_argument_group("the request (--target)")
    r.add_argument("--format", choices=FORMATS, default="auto", help="prompt format (--answers: how to read answers)")
    r.add_argument("--mode", choices=MODES, default="hybrid", help="retrieval mode")
    r.add_argument(
        "--constrain-calls",
        choices=("auto", "on", "off"),
        default="auto",
        help="calls constrained to the docs' APIs (auto: the server's default)",
    )
    r.add_argument(
        "--api-choice",
        choices=("auto", "model", "retriever"),
        default="auto",
        help="how a constrained answer's API is chosen (auto: the model's manifest; docs/answers.md)",
    )
    r.add_argument("--top-k", type=int, help="docs to retrieve (default: the server's)")
    r.add_argument(
        "--corpus", action="append", help="corpus to retrieve from (repeatable; default: the question's own, else all)"
    )
    r.add_argument("--max-tokens", type=int)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-p", type=float)
    r.add_argument("--sampling-top-k", type=int)
    r.add_argument("--seed", type=int)
    r.add_argument("--stop", action="append")
    r.add_argument("--concurrency", type=int, default=4, help="streams open at once (default 4)")
    r.add_argument("--timeout", type=float, default=300.0, help="deadline per call, seconds (default 300)")
    r.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    r.add_argument("--ca-cert", type=Path, help="PEM root certificate(s) to trust (implies --tls)")
    r.add_argument("--client-cert", type=Path, help="PEM client certificate for mutual TLS")
    r.add_argument("--client-key", type=Path, help="PEM client key for mutual TLS")
    r.add_argument(
        "--token", default=os.environ.get("APIHELPER_TOKEN"), help="bearer token (default: $APIHELPER_TOKEN)"
    )

    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="per-question JSON lines")
    o.add_argument("--summary-json", type=Path, help="the summary as JSON")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_answers)
    return p


__all__ = ["add_eval_answers_parser", "cmd_eval_answers"]
