"""apihelper-build: the offline command line (models, engines, corpus ingest).

    apihelper-build make-dev-model --out data/dev-model [--corpus PATH ...]
    apihelper-build import-gguf [--gguf FILE] --out data/smollm2
    apihelper-build ingest --milvus-uri data/milvus.db --corpus rest=spec.yaml --corpus fn=pkg/:python
    apihelper-build apply-delta --base LLAMA_DIR --delta GORILLA_DELTA_DIR --out DIR
    apihelper-build build-engine --checkpoint DIR --out ENGINE_DIR [--quant fp8] ...
    apihelper-build eval-retrieval --milvus-uri URI --corpus NAME --questions FILE.jsonl
    apihelper-build eval-answers (--target HOST:PORT | --answers FILE) --questions FILE [--api-db ...]
    apihelper-build train-embedder --out ADAPTER.npz --corpus NAME=PATH --questions NAME=FILE.jsonl

Heavy libraries are imported inside the commands, so ``--help`` works anywhere.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import fields
from pathlib import Path

from apihelper.build import apply_delta, import_gguf, trtllm_build
from apihelper.build.artifacts import corpus_texts
from apihelper.build.eval_answers_cli import add_eval_answers_parser
from apihelper.build.eval_cli import add_eval_parser, add_milvus_arguments
from apihelper.build.train_embedder import add_train_parser
from apihelper.errors import ApiHelperError, ConfigurationError, CorpusLoadError, InvalidRequestError
from apihelper.retriever.limits import IngestLimits
from apihelper.retriever.types import ApiDoc, CorpusFormat
from apihelper.service.prompts import PromptFormat


def parse_corpus_spec(spec: str) -> tuple[str, Path, CorpusFormat | None]:
    """``NAME=PATH[:FORMAT]`` -> (name, path, format or None for auto-detection)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InvalidRequestError("--corpus", f"expected NAME=PATH[:FORMAT], got {spec!r}")
    path_text, _, fmt_text = rest.rpartition(":")
    if path_text and fmt_text in {f.value for f in CorpusFormat}:
        return name, Path(path_text), CorpusFormat(fmt_text)
    return name, Path(rest), None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_make_dev_model(args: argparse.Namespace) -> int:
    from apihelper.build.dev_model import make_dev_model

    manifest = make_dev_model(
        args.out, corpus_texts(args.corpus or []), prompt_format=PromptFormat(args.prompt_format), seed=args.seed
    )
    print(f"wrote the development model to {args.out} (prompt format {manifest.prompt_format.value}, random weights)")
    return 0


def _safe(text: str) -> str:
    """``text`` printable on any stream (file names may carry undecodable bytes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def ingest_limits(args: argparse.Namespace) -> IngestLimits:
    """The IngestLimits of the ``--max-*`` flags."""
    return IngestLimits(**{f.name: getattr(args, f.name) for f in fields(IngestLimits)})


def link_partners(pairs: list[str], names: list[str]) -> dict[str, str]:
    """``--link A,B`` values as {A: B, B: A}; raises ConfigurationError for a name not ingested here."""
    partners: dict[str, str] = {}
    for pair in pairs:
        parts = [p.strip() for p in pair.split(",")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ConfigurationError(f"--link {pair!r}: expected two corpus names, A,B")
        for part in parts:
            if part not in names:
                raise ConfigurationError(f"--link {pair!r}: {part!r} is not a --corpus of this command")
        partners[parts[0]], partners[parts[1]] = parts[1], parts[0]
    return partners


def linked_docs(
    partner: str | None,
    specs: list[tuple[str, Path, CorpusFormat | None]],
    include: list[str] | None,
    limits: IngestLimits,
) -> tuple[str, list[ApiDoc]] | None:
    """The loaded docs of ``partner`` (a corpus of this command), for linking; None without one."""
    if partner is None:
        return None
    from apihelper.retriever.loaders import load_corpus

    path, fmt = next((p, f) for n, p, f in specs if n == partner)
    try:
        _, result = load_corpus(path, fmt, include=include, limits=limits)
    except CorpusLoadError:
        return None  # its own ingest reports it; this corpus is ingested unlinked
    return partner, result.docs


def cmd_ingest(args: argparse.Namespace) -> int:
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import format_report, ingest_corpus
    from apihelper.retriever.milvus_store import MilvusStore, check_corpus_name

    specs = [parse_corpus_spec(s) for s in args.corpus]
    limits = ingest_limits(args)
    partners = link_partners(args.link or [], [name for name, _, _ in specs])
    embedder = Embedder()
    store = MilvusStore(args.milvus_uri, args.milvus_token)
    partial = failed = broken = 0
    try:
        for name, path, fmt in specs:
            try:
                check_corpus_name(name)  # a bad name is that corpus's problem, not the others'
            except ConfigurationError as exc:
                print(_safe(f"{name}: not ingested: {exc}"), file=sys.stderr)
                failed += 1
                continue
            try:
                report = ingest_corpus(
                    store,
                    embedder,
                    name,
                    path,
                    fmt,
                    progress=not args.quiet,
                    include=args.include or None,
                    limits=limits,
                    views=args.views,
                    linked=linked_docs(partners.get(name), specs, args.include or None, limits),
                )
            except CorpusLoadError as exc:
                # One unreadable corpus must not stop the others; the exit status tells.
                print(_safe(f"{name}: not ingested: {exc}"), file=sys.stderr)
                failed += 1
                continue
            except ApiHelperError:
                raise  # Milvus down: the whole command fails (exit 2, one line)
            except Exception as exc:  # a bug of ours: say so in one line, go on with the next corpus
                hint = "" if args.verbose else " (--verbose prints the traceback)"
                print(
                    _safe(f"{name}: not ingested: internal error: {type(exc).__name__}: {exc}{hint}"), file=sys.stderr
                )
                if args.verbose:
                    print(_safe(traceback.format_exc()), file=sys.stderr, end="")
                broken += 1
                continue
            for problem in report.problems:
                print(_safe(f"  problem in {problem.path}: {problem.message}"), file=sys.stderr)
            partial += bool(report.problems)
            print(_safe(format_report(report)))
    finally:
        store.close()
    if broken:
        return 2
    if failed == len(specs):
        return 2
    return 3 if partial or failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apihelper-build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dev-model", help="build the small random-weight development model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--corpus", type=Path, action="append", help="corpus file/dir to train the tokenizer on")
    p.add_argument("--prompt-format", choices=[f.value for f in PromptFormat], default="gorilla_v0")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_dev_model)

    p = sub.add_parser(
        "ingest",
        help="load API docs and write them to Milvus (idempotent)",
        description=(
            "Every file is read as hostile input, within the --max-* limits below (a file past one "
            "is reported, naming the file and the limit, and skipped). Exit status: 0 everything "
            "loaded; 3 partial (some files or corpora skipped, each listed on stderr; the rest is "
            "ingested); 2 nothing ingested, Milvus unavailable, or an internal error (one line; "
            "the traceback with --verbose)."
        ),
    )
    add_milvus_arguments(p)
    p.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="NAME=PATH[:FORMAT]",
        help=f"corpus to ingest; FORMAT one of {', '.join(f.value for f in CorpusFormat)} (default: detected)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="MODULE_PREFIX",
        help="python corpora: only modules under this dotted prefix (repeatable), e.g. ai.backend.client.func",
    )
    p.add_argument(
        "--link",
        action="append",
        metavar="A,B",
        help="two corpora of this command that explain each other (an OpenAPI spec and the SDK that calls it): "
        "each doc gets links to the other side's docs it calls or is called by, and their words (repeatable)",
    )
    p.add_argument(
        "--views",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more vector per way a doc is described (each APIBench record of a call, a REST summary, "
        "a function's parameters; docs/retrieval.md); on by default, --no-views: one vector per doc",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="print the traceback of an internal error")
    limits = p.add_argument_group("limits (per file and per corpus; see retriever/limits.py)")
    for flag, default, help_text in IngestLimits.describe():
        limits.add_argument(
            flag, type=_positive_int, default=default, metavar="N", help=f"{help_text} (default {default})"
        )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "import-gguf", help="turn a GGUF chat model (default: SmolLM2-135M-Instruct) into a servable HF directory"
    )
    import_gguf.add_cli_arguments(p)
    p.set_defaults(func=import_gguf.cli_main)

    p = sub.add_parser("apply-delta", help="merge Gorilla v0 delta weights into LLaMA-7B, tensor by tensor (CPU)")
    apply_delta.add_cli_arguments(p)
    p.set_defaults(func=apply_delta.cli_main)

    p = sub.add_parser(
        "build-engine", help="compile a HF checkpoint into a TensorRT-LLM engine (GPU, TensorRT-LLM 1.2.x)"
    )
    trtllm_build.add_cli_arguments(p)
    p.set_defaults(func=trtllm_build.cli_main)

    add_eval_parser(sub)
    add_eval_answers_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = args.func(args)
    except ApiHelperError as exc:
        print(_safe(f"apihelper-build: {exc}"), file=sys.stderr)
        code = 2
    except Exception as exc:
        if args.command != "ingest":
            raise
        # An internal bug: one line, the traceback only when asked for.
        verbose = bool(getattr(args, "verbose", False))
        hint = "" if verbose else " (--verbose prints the traceback)"
        print(_safe(f"apihelper-build: internal error: {type(exc).__name__}: {exc}{hint}"), file=sys.stderr)
        if verbose:
            print(_safe(traceback.format_exc()), file=sys.stderr, end="")
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
