"""What constrained calls cost the other requests: 8 unconstrained streams, with and without one
constrained stream beside them, on the real transformers engine (continuous batching).

    .venv/bin/python bench/constrained/run.py [--model DIR] [--rounds 8] [--device cpu] [--json-out FILE]

Without ``--model`` the development model is built in a temp dir. Configurations, run in
alternating rounds (a shared machine drifts: medians over rounds, and each round's figure paired
with that round's baseline):

  A  engine without the grammar mask, 8 unconstrained streams      the baseline
  B  engine with the mask,            8 unconstrained streams      the cost of having the processor
  C  engine with the mask,            8 unconstrained + 1 constrained   the figure of merit (C vs A)
  D  engine with the mask,            8 unconstrained + 1 unconstrained a 9th stream's own cost

Every stream: a gorilla_v0 prompt with one doc of the sample corpus, 128 new tokens, greedy; the
constrained one samples at temperature 1 under the corpus-wide gorilla_v0 grammar, so it is
masked at every step. The figure is the 8 unconstrained streams' tokens per second. Acceptance
(issue 13): C at most 10% below A.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.check import ApiCatalog
from apihelper.service.answers.constraint import CallConstraints
from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.protocol import EngineRequest, GuidedDecoding, SamplingParams
from apihelper.service.engine.transformers_engine import TransformersEngine
from apihelper.service.prompts import PromptFormat, gorilla_v0_prompt

INSTRUCTIONS = [
    "Create a new session",
    "List my folders",
    "Delete the session abc",
    "Upload a file",
    "Show the logs of my session",
    "Who am I?",
    "Restart the session",
    "Create a keypair",
]
MAX_TOKENS = 128
ACCEPTED_DROP = 0.10


async def _stream(engine: TransformersEngine, request: EngineRequest) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = 0
    async for out in engine.stream(request):
        tokens = out.completion_tokens
    return tokens, time.perf_counter() - started


async def one_round(
    engine: TransformersEngine, prompts: list[str], side: EngineRequest | None, tag: str
) -> dict[str, float]:
    """Tokens/s of the 8 plain streams (their tokens over the slowest one's wall time)."""
    greedy = SamplingParams(max_tokens=MAX_TOKENS)
    plain = [_stream(engine, EngineRequest(f"{tag}-{i}", p, greedy)) for i, p in enumerate(prompts)]
    results = await asyncio.gather(*plain, *([_stream(engine, side)] if side is not None else []))
    eight = results[: len(prompts)]
    wall = max(seconds for _, seconds in eight)
    return {"tokens_per_s": sum(tokens for tokens, _ in eight) / wall, "wall_s": wall}


async def run(model: Path, rounds: int, device: str) -> dict[str, Any]:
    docs: list[ApiDoc] = load_corpus(sample_corpus_path())[1].docs
    prompts = [
        gorilla_v0_prompt(q, [RetrievedDoc(docs[i % len(docs)], "rest", 1.0)]) for i, q in enumerate(INSTRUCTIONS)
    ]
    side_prompt = gorilla_v0_prompt("Execute code in my session", [RetrievedDoc(docs[7], "rest", 1.0)])
    grammar = await CallConstraints().grammar(
        PromptFormat.GORILLA_V0, [RetrievedDoc(docs[7], "rest", 1.0)], ApiCatalog(docs).prepare()
    )
    assert isinstance(grammar, GuidedDecoding)
    plain_engine = await TransformersEngine.load(
        model, TransformersConfig(device=device, max_concurrent=9, guided_decoding=False)
    )
    masked_engine = await TransformersEngine.load(
        model, TransformersConfig(device=device, max_concurrent=9, guided_decoding=True)
    )
    sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
    configs = {
        "A": (plain_engine, None),
        "B": (masked_engine, None),
        "C": (masked_engine, lambda r: EngineRequest(f"c{r}", side_prompt, sampled, grammar)),
        "D": (masked_engine, lambda r: EngineRequest(f"d{r}", side_prompt, sampled)),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    try:
        started = time.perf_counter()
        await one_round(masked_engine, prompts, EngineRequest("warm", side_prompt, sampled, grammar), "warm-c")
        compile_and_warm_s = time.perf_counter() - started
        await one_round(plain_engine, prompts, None, "warm-a")
        for r in range(rounds):
            for name, (engine, side) in configs.items():
                results[name].append(await one_round(engine, prompts, side(r) if side else None, f"{name}{r}"))
            print(
                f"round {r}: " + "  ".join(f"{k} {v[-1]['tokens_per_s']:.0f}" for k, v in results.items()), flush=True
            )
    finally:
        await plain_engine.shutdown()
        await masked_engine.shutdown()
    a = statistics.median(x["tokens_per_s"] for x in results["A"])
    summary: dict[str, Any] = {"rounds": rounds, "first_round_with_compile_s": round(compile_and_warm_s, 2)}
    for name, rows in results.items():
        median = statistics.median(x["tokens_per_s"] for x in rows)
        paired = statistics.median(
            x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(rows, results["A"], strict=True)
        )
        summary[name] = {
            "median_tokens_per_s": round(median, 1),
            "vs_A_percent": round(100 * (median / a - 1), 1),
            "paired_vs_A_percent": round(100 * (paired - 1), 1),
        }
    summary["acceptance_c_within_10_percent_of_a"] = summary["C"]["median_tokens_per_s"] >= (1 - ACCEPTED_DROP) * a
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/constrained/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: build the dev model)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from apihelper.build.dev_model import make_dev_model

            model = Path(tmp) / "dev-model"
            make_dev_model(model, [d.text for d in load_corpus(sample_corpus_path())[1].docs])
        summary = asyncio.run(run(model, args.rounds, args.device))
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if summary["acceptance_c_within_10_percent_of_a"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
