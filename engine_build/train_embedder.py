"""``apihelper-build train-embedder``: train the query adapter (retriever.adapter) on a CPU.

    apihelper-build train-embedder --out retriever/models/query_adapter.npz \\
        --corpus rest=openapi.json --questions rest=backendai_rest.train.jsonl ... [--epochs 50] ...

The base model (the bundled MiniLM) stays frozen. Every corpus is loaded and embedded as ingest
embeds it (``retriever.ingest.document_vectors``); every question file (the project's JSONL
question format) is paired with the corpus of the same name. A square matrix ``W``, starting at
the identity, is trained so that ``normalise(W q)`` scores each question's answer documents above
the rest of *its own corpus*: a softmax over all of that corpus' documents at temperature
``tau`` (every other document is a negative), each question set weighted ``1/sqrt(n)`` so that
large sets do not drown small ones, plus ``l2 * ||W - I||^2``; full-batch Adam, one CPU thread,
so a rerun on the same data gives the same matrix. The stored matrix is
``(1 - blend) * I + blend * W`` (blend < 1 keeps part of the base model's geometry: chosen on the
validation splits, bench/retrieval/README.md).

The file's manifest records the base model, the recipe, and each corpus and question file by
name, sha256 and count; name question files after their set and split
(``bfcl_live_multiple.train.jsonl``, as bench/retrieval/train_adapter.py does): an artefact
trained on a split names that split.

Takes about a minute for ~1,500 questions over ~3,000 documents on 2 cores (embedding included).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apihelper.errors import InvalidRequestError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Recipe:
    tau: float = 0.05
    l2: float = 0.01
    epochs: int = 50
    lr: float = 5e-3
    blend: float = 0.75


@dataclass(frozen=True)
class TrainingSet:
    """One question set over one corpus: query vectors and, per query, its answer docs."""

    name: str
    queries: np.ndarray  # (n, dim) unit vectors
    positives: list[list[int]]  # indices into the corpus' doc matrix
    docs: np.ndarray  # (m, dim) unit vectors, as ingest stores them


def train_matrix(sets: Sequence[TrainingSet], recipe: Recipe) -> np.ndarray:
    """The trained and blended adapter matrix (dim x dim, float32); see the module docstring."""
    import numpy as np
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dim = sets[0].docs.shape[1]
        eye = torch.eye(dim)
        weight = torch.nn.Parameter(torch.eye(dim))
        optimiser = torch.optim.Adam([weight], lr=recipe.lr)
        batches = []
        total = 0.0
        for s in sets:
            if not s.positives:
                continue
            mask = torch.zeros(len(s.positives), s.docs.shape[0], dtype=torch.bool)
            for row, positives in enumerate(s.positives):
                mask[row, positives] = True
            per_query = 1.0 / math.sqrt(len(s.positives))
            total += per_query * len(s.positives)
            batches.append((torch.tensor(s.queries), torch.tensor(s.docs), mask, per_query))
        if not batches:
            raise InvalidRequestError("--questions", "no question has an answer among its corpus' docs")
        for _ in range(recipe.epochs):
            optimiser.zero_grad()
            loss = recipe.l2 * ((weight - eye) ** 2).sum()
            for queries, docs, mask, per_query in batches:
                adapted = torch.nn.functional.normalize(queries @ weight.T, dim=-1)
                logits = adapted @ docs.T / recipe.tau
                positive = torch.logsumexp(logits.masked_fill(~mask, -1e9), dim=-1)
                loss = loss + (torch.logsumexp(logits, dim=-1) - positive).sum() * per_query / total
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        blended = (1.0 - recipe.blend) * eye + recipe.blend * weight.detach()
        return np.asarray(blended.numpy(), dtype=np.float32)
    finally:
        torch.set_num_threads(previous)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _named(spec: str, flag: str) -> tuple[str, str]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InvalidRequestError(flag, f"expected NAME=PATH, got {spec!r}")
    return name, rest


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, embed, train and write the adapter; returns its manifest."""
    import numpy as np

    from apihelper.build.cli import parse_corpus_spec
    from apihelper.retriever.adapter import QueryAdapter
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.evaluate import load_questions
    from apihelper.retriever.ingest import document_vectors
    from apihelper.retriever.loaders import load_corpus
    from apihelper.retriever.types import ApiDoc

    recipe = Recipe(tau=args.tau, l2=args.l2, epochs=args.epochs, lr=args.lr, blend=args.blend)
    embedder = Embedder()
    corpora: dict[str, tuple[list[ApiDoc], np.ndarray]] = {}
    corpus_manifest = []
    for spec in args.corpus:
        name, path, fmt = parse_corpus_spec(spec)
        used, result = load_corpus(path, fmt)
        unique: dict[str, ApiDoc] = {}
        for doc in result.docs:
            unique.setdefault(doc.key, doc)
        docs = list(unique.values())
        vectors = np.asarray(document_vectors(embedder, docs), dtype=np.float32)
        corpora[name] = (docs, vectors)
        corpus_manifest.append(
            {"name": name, "file": path.name, "format": used.value, "sha256": _sha256(path), "docs": len(docs)}
        )
        print(f"  corpus {name}: {len(docs)} docs", file=sys.stderr)
    sets: list[TrainingSet] = []
    question_manifest = []
    for spec in args.questions:
        name, file_text = _named(spec, "--questions")
        path = Path(file_text)
        if name not in corpora:
            raise InvalidRequestError("--questions", f"no --corpus named {name!r}")
        docs, vectors = corpora[name]
        index = {doc.key: i for i, doc in enumerate(docs)}
        questions = load_questions(path)
        pairs = [(q, [index[a] for a in q.answers if a in index]) for q in questions]
        kept = [(q, p) for q, p in pairs if p]
        queries = np.asarray(embedder.embed_documents([q.question for q, _ in kept]), dtype=np.float32)
        sets.append(TrainingSet(name, queries, [p for _, p in kept], vectors))
        question_manifest.append(
            {"corpus": name, "file": path.name, "sha256": _sha256(path), "questions": len(questions), "used": len(kept)}
        )
        print(f"  questions {path.name} over {name}: {len(kept)} of {len(questions)} usable", file=sys.stderr)
    weight = train_matrix(sets, recipe)
    import torch

    manifest: dict[str, Any] = {
        "base_model": embedder.model_name,
        "dim": int(weight.shape[0]),
        "recipe": {
            **recipe.__dict__,
            "loss": "softmax over the question's corpus, 1/sqrt(n) per set, l2 to identity",
            "optimiser": "full-batch Adam, 1 thread",
            "init": "identity",
        },
        "corpora": corpus_manifest,
        "questions": question_manifest,
        "trained_with": {"torch": str(torch.__version__), "python": platform.python_version()},
    }
    QueryAdapter(weight, manifest).save(args.out)
    return manifest


def cmd_train_embedder(args: argparse.Namespace) -> int:
    manifest = run(args)
    used = sum(q["used"] for q in manifest["questions"])
    print(f"wrote {args.out}: {manifest['dim']}x{manifest['dim']} query adapter from {used} questions")
    return 0


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-embedder`` on the main parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train-embedder",
        help="train the query adapter over frozen MiniLM on question files (CPU, about a minute)",
        description=(__doc__ or "").split("\n\n")[2],
    )
    p.add_argument("--out", type=Path, required=True, help="the adapter file to write (.npz)")
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH[:FORMAT]")
    p.add_argument(
        "--questions",
        action="append",
        required=True,
        metavar="NAME=FILE.jsonl",
        help="questions over corpus NAME (name the file after its set and split: it is recorded)",
    )
    recipe = Recipe()
    p.add_argument("--tau", type=float, default=recipe.tau, help="softmax temperature")
    p.add_argument("--l2", type=float, default=recipe.l2, help="weight of ||W - I||^2")
    p.add_argument("--epochs", type=int, default=recipe.epochs)
    p.add_argument("--lr", type=float, default=recipe.lr)
    p.add_argument("--blend", type=float, default=recipe.blend, help="stored W = (1 - blend) I + blend W")
    p.set_defaults(func=cmd_train_embedder)
    return p


__all__ = ["Recipe", "TrainingSet", "add_train_parser", "cmd_train_embedder", "run", "train_matrix"]
