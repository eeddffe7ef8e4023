"""Real clients as peers of the HTTP front end: the official ``openai`` package against the
OpenAI-compatible routes, and a headless Chromium (Debian's, driven by Playwright) using the web
app. The engine is scripted, so what the model "answers" is known and the checks are exact."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from apihelper.retriever.doc_kinds import function_schema
from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc
from apihelper.service.engine.fake import GORILLA_V0_REPLY, FakeEngine
from apihelper.service.frontends import RunningServer
from apihelper.service.prompts import PromptFormat
from tests.support import live_server

TOKEN = "s3cret-token"
# What the scripted model answers: an openfunctions call to an operation of the sample corpus.
CALL = '<<function>>createSession(image="python:3.11", resources={"cpu": 2})'
CHROMIUM = Path("/usr/bin/chromium")


def _sample_docs() -> list[ApiDoc]:
    _, loaded = load_corpus(sample_corpus_path(), None)
    return loaded.docs


def _by_key(docs: list[ApiDoc], *keys: str) -> list[ApiDoc]:
    return [next(d for d in docs if d.key == k) for k in keys]


@dataclass
class Served:
    running: RunningServer
    engine: FakeEngine
    names: set[str]  # the corpus' function names: what tool calls may name


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    """The sample corpus, retrieval returning three of its operations, the scripted engine
    answering CALL; auth on."""
    docs = _sample_docs()
    retrieved = _by_key(docs, "GET /sessions", "POST /sessions", "DELETE /sessions/{session_id}")
    retriever = MemoryRetriever(docs, retrieved=retrieved)
    engine = FakeEngine(CALL, prompt_format=PromptFormat.OPENFUNCTIONS_V2, model="gorilla-openfunctions-v2")
    names = {(function_schema(d) or {}).get("name", "") for d in docs}
    async with live_server(engine, retriever, http=True, auth_token=TOKEN) as running:
        yield Served(running, engine, names)


def _client(running: RunningServer, token: str = TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{running.http_port}/v1", api_key=token, max_retries=0)


def _tools(docs: list[ApiDoc]) -> list[Any]:
    return [{"type": "function", "function": function_schema(d)} for d in docs]


async def test_openai_client_streams_tool_calls(server: Served) -> None:
    client = _client(server.running)
    models = await client.models.list()
    model = models.data[0].id
    assert model == "gorilla-openfunctions-v2"
    tools = _tools(_by_key(_sample_docs(), "POST /sessions", "GET /images"))
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Create a new session"}],
        tools=tools,
        tool_choice="auto",
        stream=True,
        stream_options={"include_usage": True},
    )
    content, finish, usage, chunks = "", None, None, 0
    calls: dict[int, tuple[str, str, str, str]] = {}  # index -> (id, type, name, arguments)
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                assert call.function is not None
                calls[call.index] = (
                    call.id or "",
                    call.type or "",
                    call.function.name or "",
                    call.function.arguments or "",
                )
            finish = choice.finish_reason or finish
    assert content == CALL and chunks > 5  # the text came token by token
    assert finish == "tool_calls"
    assert [name for _, _, name, _ in calls.values()] == ["createSession"]
    assert all(name in server.names for _, _, name, _ in calls.values())
    call_id, kind, _, arguments = calls[0]
    assert json.loads(arguments) == {"image": "python:3.11", "resources": {"cpu": 2}}
    assert call_id and kind == "function"
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_openai_client_without_tools_gets_the_retrieved_docs_as_tools(
    server: Served,
) -> None:
    completion = await _client(server.running).chat.completions.create(
        model="gorilla-openfunctions-v2", messages=[{"role": "user", "content": "Create a new session"}]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == CALL
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["createSession"]  # type: ignore[union-attr]
    assert {c.function.name for c in calls} <= server.names  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments)["image"] == "python:3.11"  # type: ignore[union-attr]
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    extra = completion.model_extra or {}
    assert extra["apihelper"]["verdict"] in ("VERDICT_VALID", "VERDICT_WRONG_ARGUMENTS")
    assert completion.model == "gorilla-openfunctions-v2"
    prompt = server.engine.requests[-1].prompt  # the retrieved docs were the model's functions
    assert '"name": "createSession"' in prompt and '"name": "listSessions"' in prompt


async def test_tool_choice_is_honoured(server: Served) -> None:
    engine = server.engine
    client = _client(server.running)
    tools = _tools(_by_key(_sample_docs(), "POST /sessions", "GET /images"))
    messages: Any = [{"role": "user", "content": "Create a new session"}]

    none = await client.chat.completions.create(
        model="gorilla-openfunctions-v2", messages=messages, tools=tools, tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    assert "<<function>>[" not in engine.requests[-1].prompt  # the model was shown no functions

    await client.chat.completions.create(
        model="gorilla-openfunctions-v2",
        messages=messages,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "listImages"}},
    )
    prompt = engine.requests[-1].prompt
    assert '"name": "listImages"' in prompt and '"name": "createSession"' not in prompt

    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gorilla-openfunctions-v2",
            messages=messages,
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "rm_rf"}},
        )
    assert info.value.body["param"] == "tool_choice.function.name"  # type: ignore[index]


async def test_openai_client_errors(server: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        await _client(server.running, token="wrong").models.list()
    with pytest.raises(openai.BadRequestError) as info:
        await _client(server.running).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["param"] == "model"  # type: ignore[index]


# -- the web app in a browser ------------------------------------------------------------------


async def test_the_web_app_streams_an_answer_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make install` does it)")
    from playwright.async_api import async_playwright

    docs = _sample_docs()
    retriever = MemoryRetriever(docs, retrieved=_by_key(docs, "POST /sessions", "GET /sessions"))
    # ~20 tokens 60 ms apart: the page has time to paint each one.
    engine = FakeEngine(token_delay_s=0.06)
    async with live_server(engine, retriever, http=True, auth_token=TOKEN) as running, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{running.http_port}/")
            # Without the token the corpora cannot be listed: the page says so plainly.
            await page.wait_for_function("document.getElementById('corpora-list').textContent.includes('401')")
            await page.click("summary")
            await page.fill("#token", TOKEN)
            await page.dispatch_event("#token", "change")
            await page.wait_for_selector("#corpora-list input[value=demo]")
            await page.check("#corpora-list input[value=demo]")
            # Record every change of the answer's text, and whether the verdict was visible then.
            await page.evaluate(
                """() => {
                    window.__updates = [];
                    const answer = document.getElementById('answer');
                    new MutationObserver(() => window.__updates.push({
                        text: answer.textContent,
                        verdict: !document.getElementById('result').hidden,
                    })).observe(answer, {childList: true, characterData: true, subtree: true});
                }"""
            )
            await page.fill("#question", "Create a new session")
            await page.click("#submit")
            await page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            updates = await page.evaluate("window.__updates")
            before = [u for u in updates if not u["verdict"] and u["text"]]
            assert len(before) >= 2, updates  # the answer grew in steps before the completion
            assert len({u["text"] for u in before}) >= 2
            assert await page.text_content("#answer") == GORILLA_V0_REPLY
            assert await page.text_content("#verdict") == "valid"
            assert "POST /sessions" in (await page.text_content("#sources") or "")
            assert "POST /sessions" in (await page.text_content("#calls") or "")
            assert "first token" in (await page.text_content("#timings") or "")
            assert await page.is_hidden("#error")
            shot = tmp_path / "web-app.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"web app screenshot: {shot}")
            assert shot.stat().st_size > 0
            assert not errors, errors
        finally:
            await browser.close()
    await asyncio.sleep(0)
