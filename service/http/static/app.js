// apihelper's web app: plain JavaScript, no build step. It asks /v1/generate and reads the
// Server-Sent Events from fetch's ReadableStream (EventSource cannot POST): the sources, then the
// answer as it is generated, then the completion with the parsed calls, verdict and timings.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "apihelper.token";
let controller = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const e = body.error || {};
    return `${response.status}: ${e.message || response.statusText}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

function element(tag, text, className) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (className) el.className = className;
  return el;
}

async function loadCorpora() {
  const list = $("corpora-list");
  try {
    const response = await fetch("v1/corpora", { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const { corpora } = await response.json();
    list.textContent = corpora.length ? "" : "no corpus is ingested";
    list.className = corpora.length ? "" : "muted";
    for (const c of corpora) {
      const label = element("label");
      const box = element("input");
      box.type = "checkbox";
      box.value = c.name;
      label.append(box, ` ${c.name} `, element("small", `(${c.format}, ${c.doc_count} docs)`));
      list.append(label);
    }
  } catch (err) {
    list.textContent = `corpora unavailable (${err.message}); set the token and reload`;
  }
}

// Server-Sent Events framing, as the HTML standard defines it: events end at a blank line;
// "event:" names one, "data:" lines are joined with newlines.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a comment: the server's keep-alive ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

const shortName = (value) => String(value).replace(/^(VERDICT|FINISH_REASON)_/, "").toLowerCase();

function showSources(sources) {
  const list = $("sources");
  list.replaceChildren();
  list.className = "";
  if (!sources.length) list.append(element("li", "none retrieved", "muted"));
  for (const s of sources) {
    const li = element("li");
    li.append(element("code", s.key), ` ${s.title} `, element("small", `${s.corpus} · score ${s.score.toFixed(3)}`));
    list.append(li);
  }
}

function showCompletion(c) {
  const verdict = shortName(c.verdict);
  $("verdict").textContent = verdict.replace("_", " ");
  $("verdict").className = `verdict ${verdict}`;
  $("verdict-reasons").replaceChildren(...c.verdict_reasons.map((r) => element("li", r)));
  const calls = $("calls");
  calls.replaceChildren();
  if (!c.api_calls.length) calls.append(element("p", "no call could be read from the answer", "muted"));
  for (const call of c.api_calls) {
    const box = element("div", undefined, "call");
    box.append(element("code", call.raw), " ", element("span", shortName(call.verdict), `verdict ${shortName(call.verdict)}`));
    const facts = element("ul");
    facts.append(element("li", `name: ${call.name || "?"}`));
    for (const [k, v] of Object.entries(call.arguments)) facts.append(element("li", `${k} = ${v}`));
    if (call.matched_key) facts.append(element("li", `matches ${call.matched_key}${call.retrieved ? " (retrieved)" : " (not retrieved)"}`));
    if (call.suggestion) facts.append(element("li", `did you mean ${call.suggestion}?`));
    for (const r of call.reasons) facts.append(element("li", r));
    box.append(facts);
    calls.append(box);
  }
  const t = c.timings;
  const rows = [
    ["retrieval", t.retrieval_ms], ["  embedding", t.embed_ms], ["  search", t.search_ms],
    ["queue", t.queue_ms], ["first token", t.first_token_ms], ["total", t.total_ms],
  ];
  $("timings").replaceChildren(...rows.map(([name, ms]) => {
    const tr = element("tr");
    tr.append(element("td", name.trim(), name.startsWith(" ") ? "part" : undefined), element("td", `${ms.toFixed(1)} ms`));
    return tr;
  }));
  const usage = c.usage;
  $("status").textContent = `done: ${shortName(c.finish_reason)}, ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`;
  $("result").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  $("error").hidden = true;
  $("result").hidden = true;
  $("answer").textContent = "";
  $("sources").replaceChildren(element("li", "retrieving…", "muted"));
  const corpora = [...document.querySelectorAll("#corpora-list input:checked")].map((b) => b.value);
  const request = {
    instruction: $("question").value,
    retrieval: { corpora },
    sampling: { max_tokens: Number($("max-tokens").value) || 128 },
  };
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  controller = new AbortController();
  $("submit").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "asking…";
  try {
    const response = await fetch("v1/generate", {
      method: "POST", headers: headers(), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const { event, data } of sseEvents(response.body)) {
      if (event === "sources") {
        showSources(data.sources.sources);
        $("status").textContent = "generating…";
      } else if (event === "delta") {
        $("answer").append(data.delta.text);
      } else if (event === "completion") {
        showCompletion(data.completion);
      } else if (event === "error") {
        throw new Error(`${data.error.code}: ${data.error.message}`);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") $("status").textContent = "stopped";
    else {
      showError(err.message);
      $("status").textContent = "failed";
    }
  } finally {
    $("submit").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("token").value = localStorage.getItem(TOKEN_KEY) || "";
$("ask").addEventListener("submit", ask);
$("stop").addEventListener("click", () => controller && controller.abort());
$("token").addEventListener("change", () => {
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("corpora-list").replaceChildren();
  loadCorpora();
});
loadCorpora();
