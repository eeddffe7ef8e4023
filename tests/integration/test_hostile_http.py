"""Hostile input over the HTTP front end (issue 25), against the real server: each test is one
row of the probe, with generated inputs, asserting structural facts (bounded work, statuses,
counts) rather than tight wall-time budgets."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx

from apihelper.service.engine.fake import FakeEngine
from apihelper.service.prompt_fit import MAX_CHARS_PER_TOKEN
from tests.support import budget, http_client, live_server


class CountingEngine(FakeEngine):
    """The fake engine, noting what its tokenizer was given and on which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []  # (thread, characters)

    def count_tokens(self, text: str) -> int:
        self.calls.append((threading.get_ident(), len(text)))
        return super().count_tokens(text)

    @property
    def tokenized_chars(self) -> int:
        return sum(n for _, n in self.calls)


def _tools(total_bytes: int, count: int = 128) -> list[dict[str, Any]]:
    """``count`` tools of about ``total_bytes`` in all, each with its own words (no two alike)."""
    each = total_bytes // count
    tools = []
    for i in range(count):
        words = " ".join(f"w{i}x{j}" for j in range(each // 8))
        tools.append({"type": "function", "function": {"name": f"tool_{i}", "description": words}})
    return tools


async def test_a_chat_request_whose_tools_do_not_fit_keeps_the_loop_free_and_its_work_bounded() -> None:
    """Row 3: 1 MB of tools. The fit runs off the event loop (the tokenizer in a worker), tokenizes
    a bounded share of the request (each doc once, none past the context), and a health check made
    meanwhile answers at once."""
    engine = CountingEngine()
    async with live_server(engine, http=True) as server, http_client(server, timeout=budget(120.0)) as client:
        tools = _tools(1_000_000)
        body = {"model": "fake", "messages": [{"role": "user", "content": "call a tool"}], "tools": tools}
        size = len(httpx.Request("POST", "http://x", json=body).content)
        assert size > 900_000

        delays: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                health = await client.get("/healthz")
                assert health.status_code == 200
                delays.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        try:
            answer = await client.post("/v1/chat/completions", json=body)
        finally:
            done.set()
            await prober
        assert answer.status_code == 200, answer.text
        # On the loop: only the fake engine's own count of the prompt it is given (one call, a
        # prompt that fits the context); the fitting itself ran in the worker.
        loop_thread = threading.get_ident()
        on_loop = [n for thread, n in engine.calls if thread == loop_thread]
        assert len(on_loop) == 1 and len(engine.calls) > 1, engine.calls
        # Linear and bounded by the context: far less than the request is ever tokenized (the old
        # fit re-tokenized the whole prompt once per dropped tool: ~64 MB here).
        context_chars = engine.info.max_model_len * MAX_CHARS_PER_TOKEN
        assert engine.tokenized_chars < min(size // 2, 8 * context_chars), engine.tokenized_chars
        assert delays and max(delays) < budget(0.5), max(delays)

        # The same tools again: their counts are cached, so less is tokenized the second time.
        first = engine.tokenized_chars
        again = await client.post("/v1/chat/completions", json=body)
        assert again.status_code == 200
        assert engine.tokenized_chars - first < first


async def test_a_tool_name_must_match_whole() -> None:
    """Row 13: a name with a trailing newline is not a name (``fullmatch``, not ``match`` + ``$``)."""
    async with live_server(http=True) as server, http_client(server) as client:
        for name in ("tool\n", "tool\nx", "\ntool"):
            tool = {"type": "function", "function": {"name": name}}
            body = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
            refused = await client.post("/v1/chat/completions", json=body)
            assert refused.status_code == 400, (name, refused.text)
            assert refused.json()["error"]["param"] == "tools[0].function.name"
