"""eval-answers' parts on hand-made data: question sets and splits, answer files, reading calls,
scoring per kind, the summary, and the Generate request a question becomes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from apihelper.build.evaluation.answers import AnswerLine, match_answers, read_answers
from apihelper.build.evaluation.bfcl_ast import Category
from apihelper.build.evaluation.calls import (
    AnswerStyle,
    bfcl_call,
    detect_style,
    read_answer,
    read_tool_calls,
    readable,
    render_call,
)
from apihelper.build.evaluation.gorilla_ast import ApiDatabase, Hub
from apihelper.build.evaluation.questions import (
    ApibenchGold,
    BfclGold,
    KeyGold,
    Question,
    SetKind,
    check_source,
    detect_kind,
    load_questions,
    read_manifest,
    select_split,
)
from apihelper.build.evaluation.report import QuestionResult, format_table, speed_of, summarize
from apihelper.build.evaluation.runner import Generation, RequestOptions, generate_request
from apihelper.build.evaluation.scoring import (
    Outcome,
    ScoringContext,
    score_answer,
    score_apibench,
    score_bfcl,
    score_keys,
)
from apihelper.build.evaluation.verdicts import AnswerVerdict, CallVerdict
from apihelper.errors import CorpusLoadError, InvalidRequestError
from apihelper.v1 import apihelper_pb2 as pb

# ---------------------------------------------------------------------------------------------- data


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


KEY_ROWS: list[dict[str, Any]] = [
    {
        "id": "k-1",
        "corpus": "rest",
        "question": "Make a thing",
        "answer": "POST /things",
        "alt_answers": ["PUT /things"],
    },
    {"id": "k-2", "corpus": "fn", "question": "Read a thing", "answer": "pkg.mod.Things.get"},
]
APIBENCH_ROWS: list[dict[str, Any]] = [
    {
        "code": "###Instruction: I want a model that reads speech.\n###Output: <<<domain>>>: Speech",
        "api_call": "torch.hub.load('owner/speech', 'stt')",
        "provider": "PyTorch",
        "api_data": {"domain": "Speech", "api_call": "torch.hub.load(repo_or_dir='owner/speech',  model='stt')"},
    },
    {
        "code": "###Instruction: Find a classifier.\n###Output: x",
        "api_call": "x",
        "provider": "PyTorch",
        "api_data": {"domain": "Classification", "api_call": "torch.hub.load(repo_or_dir='owner/vision', model='net')"},
    },
]
DB_RECORDS = [
    {"domain": "Speech", "api_call": "torch.hub.load(repo_or_dir='owner/speech', model='stt')"},
    {"domain": "Classification", "api_call": "torch.hub.load(repo_or_dir='owner/vision', model='net')"},
]
FORECAST = {
    "name": "weather.forecast",
    "description": "Forecast for a city.",
    "parameters": {
        "type": "dict",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
ALERTS = {"name": "alerts", "parameters": {"type": "dict", "properties": {"region": {"type": "string"}}}}
BFCL_ROW = {
    "id": "multiple_7",
    "question": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]],
    "function": [FORECAST, ALERTS],
}
BFCL_TRUTH = {"id": "multiple_7", "ground_truth": [{"weather.forecast": {"city": ["Paris"], "days": [3, ""]}}]}


def bfcl_gold() -> BfclGold:
    return BfclGold((FORECAST, ALERTS), tuple(BFCL_TRUTH["ground_truth"]), Category.MULTIPLE)  # type: ignore[arg-type]


def torch_db() -> ApiDatabase:
    return ApiDatabase.from_entries(DB_RECORDS, Hub.TORCHHUB)


# ---------------------------------------------------------------------------------------------- questions


def test_each_kind_of_question_file_is_read(tmp_path: Path) -> None:
    keys = load_questions(write_jsonl(tmp_path / "dev.jsonl", KEY_ROWS))
    assert [(q.id, q.kind, q.corpus) for q in keys] == [("k-1", SetKind.KEYS, "rest"), ("k-2", SetKind.KEYS, "fn")]
    assert keys[0].gold == KeyGold(("POST /things", "PUT /things"))

    apibench = load_questions(write_jsonl(tmp_path / "torchhub_eval.json", APIBENCH_ROWS))
    assert [q.id for q in apibench] == ["eval-1", "eval-2"]  # as the split manifests name them
    assert apibench[0].text == "I want a model that reads speech."
    assert apibench[0].gold == ApibenchGold("Speech", "torch.hub.load(repo_or_dir='owner/speech', model='stt')")

    (tmp_path / "possible_answer").mkdir()
    write_jsonl(tmp_path / "possible_answer" / "multi.json", [BFCL_TRUTH])
    (bfcl,) = load_questions(write_jsonl(tmp_path / "multi.json", [BFCL_ROW]))
    assert bfcl.text == "Weather in Paris?"  # user turns only
    assert isinstance(bfcl.gold, BfclGold) and bfcl.gold.category is Category.MULTIPLE
    assert bfcl.gold.ground_truth == tuple(BFCL_TRUTH["ground_truth"])


def test_unknown_and_mixed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusLoadError, match="no known question format"):
        detect_kind(write_jsonl(tmp_path / "x.jsonl", [{"id": "1", "text": "a doc"}]))
    with pytest.raises(CorpusLoadError, match=":2"):
        load_questions(write_jsonl(tmp_path / "mixed.jsonl", [KEY_ROWS[0], APIBENCH_ROWS[0]]))
    with pytest.raises(CorpusLoadError, match="possible_answer"):
        load_questions(write_jsonl(tmp_path / "lonely.json", [BFCL_ROW]))


def test_a_split_selects_its_ids_in_manifest_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "torchhub_eval.json", APIBENCH_ROWS)
    questions = load_questions(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path = tmp_path / "split.json"
    manifest_path.write_text(
        json.dumps(
            {"splits": {"test": ["eval-2", "eval-1"]}, "sources": [{"file": "x/torchhub_eval.json", "sha256": digest}]}
        )
    )
    manifest = read_manifest(manifest_path)
    check_source(manifest, manifest_path, path)
    assert [q.id for q in select_split(questions, manifest, "test", manifest_path=manifest_path)] == [
        "eval-2",
        "eval-1",
    ]
    with pytest.raises(InvalidRequestError, match="no split 'train'"):
        select_split(questions, manifest, "train", manifest_path=manifest_path)

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"train": ["eval-1"], "test": ["eval-3"]}))
    with pytest.raises(InvalidRequestError, match="1 of the 1 ids"):
        select_split(questions, read_manifest(flat), "test", manifest_path=flat)

    path.write_text(path.read_text() + "\n")  # another version of the file than the split was cut from
    with pytest.raises(CorpusLoadError, match="differs"):
        check_source(manifest, manifest_path, path)


# ---------------------------------------------------------------------------------------------- answers


def test_answers_match_by_id_or_by_gorillas_line_number(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 2, "text": "second", "model_id": "m"},
            {"id": "eval-1", "text": "first"},
            {"question_id": 9, "text": "nobody's"},
            {"id": "eval-1", "answer_id": "no text"},
        ],
    )
    questions = load_questions(write_jsonl(tmp_path / "torchhub_eval.json", APIBENCH_ROWS))
    matched = match_answers(read_answers(path), questions)
    assert matched.by_question["eval-2"] == AnswerLine("2", "second")
    assert matched.by_question["eval-1"] == AnswerLine("eval-1", None)  # the later line wins
    assert matched.unmatched == ("9",)
    with pytest.raises(CorpusLoadError, match="needs"):
        read_answers(write_jsonl(tmp_path / "bad.jsonl", [{"text": "no id"}]))


# ---------------------------------------------------------------------------------------------- calls


@pytest.mark.parametrize(
    ("text", "style"),
    [
        ('<tool_call>[{"name": "f", "arguments": {}}]</tool_call>', AnswerStyle.TOOL_CALLS),
        ('```json\n[{"name": "f", "arguments": {}}]\n```', AnswerStyle.TOOL_CALLS),
        ('{"name": "f", "arguments": {}}', AnswerStyle.TOOL_CALLS),
        ("<<function>>f(a=1)", AnswerStyle.FUNCTIONS),
        ("<<<api_call>>>: f(a=1)", AnswerStyle.GORILLA),
        ("{'domain': 'x', 'api_call': 'f()'}", AnswerStyle.GORILLA),
    ],
)
def test_the_style_is_read_off_the_text(text: str, style: AnswerStyle) -> None:
    assert detect_style(text, AnswerStyle.GORILLA) is style


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>[{"name": "weather.forecast", "arguments": {"city": "Paris", "days": 3}}]</tool_call>',
        '<tool_call>{"name": "weather.forecast", "arguments": {"city": "Paris", "days": 3}}</tool_call>',
        '[{"name": "weather.forecast", "arguments": {"city": "Paris", "days": 3}}] and some prose',
        '{"function": {"name": "weather.forecast", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}}',
        '<tool_call>[{"name": "weather.forecast", "parameters": {"city": "Paris", "days": 3}}]',  # cut off
    ],
)
def test_tool_calls_in_each_layout_give_the_same_call(text: str) -> None:
    (call,) = read_tool_calls(text)
    assert bfcl_call(call) == ("weather.forecast", {"city": "Paris", "days": 3})
    assert render_call(call) == "weather.forecast(city='Paris', days=3)"


def test_hermes_blocks_are_one_call_each_and_bad_json_is_unparseable() -> None:
    calls = read_tool_calls(
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b"}</tool_call>'
    )
    assert [c.name for c in calls] == ["a", "b"]
    (bad,) = read_tool_calls("<tool_call>[{name: a}]</tool_call>")
    assert not bad.name and bad.problem
    assert not readable(read_tool_calls("I cannot help with that."))
    (no_args,) = read_tool_calls('{"name": "a", "arguments": 3}')
    assert no_args.name == "a" and not no_args.args and "not an object" in no_args.problem


def test_bfcl_takes_keyword_values_and_the_source_of_what_is_not_a_literal() -> None:
    answer = read_answer("<<function>>weather.forecast('x', city=PARIS, days=3)", AnswerStyle.FUNCTIONS)
    assert [bfcl_call(c) for c in answer.calls] == [("weather.forecast", {"city": "PARIS", "days": 3})]
    assert render_call(answer.calls[0]) == "weather.forecast('x', city=PARIS, days=3)"


# ---------------------------------------------------------------------------------------------- scoring


def test_apibench_ours_labels_a_tool_call_that_gorillas_rule_cannot_see() -> None:
    gold = ApibenchGold("Speech", "")
    text = '<tool_call>[{"name": "torch.hub.load", "arguments": {"repo_or_dir": "owner/speech", "model": "stt"}}]</tool_call>'
    labels = score_apibench(text, read_answer(text, AnswerStyle.TOOL_CALLS), gold, torch_db())
    assert labels["gorilla"].outcome is Outcome.UNPARSEABLE and labels["gorilla"].source == "none"
    assert (labels["ours"].outcome, labels["ours"].source) == (Outcome.CORRECT, "parsed_call")
    assert labels["ours"].detail == DB_RECORDS[0]["api_call"]

    gorilla_text = "<<<api_call>>>: torch.hub.load('owner/vision', 'net')\n<<<api_provider>>>: PyTorch"
    labels = score_apibench(gorilla_text, read_answer(gorilla_text, AnswerStyle.GORILLA), gold, torch_db())
    assert labels["gorilla"] == labels["ours"] and labels["ours"].outcome is Outcome.ERROR  # another domain
    invented = "<<function>>torch.hub.load('owner/speech', 'tts')"
    labels = score_apibench(invented, read_answer(invented, AnswerStyle.FUNCTIONS), gold, torch_db())
    assert labels["ours"].outcome is Outcome.HALLUCINATION


@pytest.mark.parametrize(
    ("text", "outcome", "detail"),
    [
        ("<<function>>weather.forecast(city='paris')", Outcome.CORRECT, ""),
        ("<<function>>weather.forecast(city='Lyon')", Outcome.ERROR, "value_error:string"),
        ("<<function>>alerts(region='Paris')", Outcome.ERROR, "simple_function_checker:wrong_func_name"),
        ("<<function>>weather.lookup(city='Paris')", Outcome.HALLUCINATION, "not a candidate function: weather.lookup"),
        ("It will be sunny.", Outcome.UNPARSEABLE, "no <<function>> call in the answer"),
    ],
)
def test_bfcl_labels(text: str, outcome: Outcome, detail: str) -> None:
    (label,) = score_bfcl(read_answer(text, AnswerStyle.FUNCTIONS), bfcl_gold()).values()
    assert (label.outcome, label.detail) == (outcome, detail)


def test_bfcl_data_the_checker_cannot_read_is_not_held_against_the_answer() -> None:
    numbers = {**FORECAST, "parameters": {"type": "dict", "properties": {"city": {"type": "number"}}, "required": []}}
    gold = BfclGold((numbers,), ({"weather.forecast": {"city": [1.0]}},), Category.MULTIPLE)
    (label,) = score_bfcl(read_answer("<<function>>weather.forecast(city=1.0)", AnswerStyle.FUNCTIONS), gold).values()
    assert label.outcome is Outcome.FAILED and "json_schema_types" in label.detail


def verdict(*calls: tuple[str, str, str]) -> AnswerVerdict:
    checked = tuple(CallVerdict(name, key, v) for name, key, v in calls)
    return AnswerVerdict(checked[0].verdict if checked else "unparseable", checked)


@pytest.mark.parametrize(
    ("answer", "right_api", "with_args"),
    [
        (verdict(("POST /things", "POST /things", "valid")), Outcome.CORRECT, Outcome.CORRECT),
        (verdict(("PUT /things/1", "PUT /things", "wrong_arguments")), Outcome.CORRECT, Outcome.ERROR),
        (verdict(("GET /things", "GET /things", "valid")), Outcome.ERROR, Outcome.ERROR),
        (verdict(("GET /nothing", "", "unknown_api")), Outcome.ERROR, Outcome.ERROR),
        (verdict(), Outcome.UNPARSEABLE, Outcome.UNPARSEABLE),
    ],
)
def test_keys_labels(answer: AnswerVerdict, right_api: Outcome, with_args: Outcome) -> None:
    labels = score_keys(answer, KeyGold(("POST /things", "PUT /things")))
    assert (labels["right_api"].outcome, labels["right_api_valid_args"].outcome) == (right_api, with_args)
    assert not labels["right_api"].has_hallucination


def test_no_answer_fails_every_label_and_keys_without_docs_cannot_be_scored() -> None:
    keyed = Question("k-1", 1, "Make a thing", KeyGold(("POST /things",)), corpus="rest")
    scored = score_answer(keyed, None, AnswerStyle.GORILLA, ScoringContext())
    assert {n: lab.outcome for n, lab in scored.labels.items()} == {
        "right_api": Outcome.FAILED,
        "right_api_valid_args": Outcome.FAILED,
    }
    unscored = score_answer(keyed, "<<<api_call>>>: POST /things", AnswerStyle.GORILLA, ScoringContext())
    assert unscored.verdict is None and unscored.labels["right_api"].outcome is Outcome.FAILED
    served = verdict(("POST /things", "POST /things", "valid"))
    assert score_answer(keyed, "x", AnswerStyle.GORILLA, ScoringContext(), served).labels["right_api"].outcome is (
        Outcome.CORRECT
    )


# ---------------------------------------------------------------------------------------------- report


def test_summary_rates_verdicts_and_the_agreement_table() -> None:
    question = Question("q", 1, "Weather in Paris?", bfcl_gold())
    texts = [
        ("<<function>>weather.forecast(city='Paris')", "valid"),
        ("<<function>>weather.lookup(city='Paris')", "unknown_api"),
        ("<<function>>weather.lookup(city='Paris')", "unchecked"),
        ("<<function>>alerts(region='x')", "unknown_api"),
        ("no idea", "unparseable"),
    ]
    results = [
        QuestionResult(
            question,
            text,
            score_answer(question, text, AnswerStyle.FUNCTIONS, ScoringContext(), AnswerVerdict(v, ())),
        )
        for text, v in texts
    ]
    summary = summarize(results)
    (bfcl,) = summary.labels
    assert (bfcl.n, bfcl.rate(Outcome.CORRECT), bfcl.rate(Outcome.HALLUCINATION)) == (5, 0.2, 0.4)
    assert dict(summary.verdicts) == {"valid": 1, "unchecked": 1, "unknown_api": 2, "unparseable": 1}
    table = summary.agreement["bfcl"]
    assert (table.both, table.verdict_only, table.label_only, table.neither) == (1, 1, 1, 2)
    assert table.agreement == pytest.approx(0.6)
    text = format_table(summary)
    assert "bfcl" in text and "agreement 0.600" in text
    row = results[1].to_json()
    assert row["labels"]["bfcl"]["outcome"] == "hallucination" and row["calls"][0]["name"] == "weather.lookup"


def test_speed_is_over_the_calls_that_answered() -> None:
    generations = [
        Generation("a", "x", ttft_ms=100.0, server_first_token_ms=80.0, server_total_ms=1080.0, completion_tokens=11),
        Generation("b", "x", ttft_ms=300.0, server_first_token_ms=90.0, server_total_ms=590.0, completion_tokens=6),
        Generation("c", error="UNAVAILABLE"),
    ]
    speed = speed_of(generations, wall_s=2.0)
    assert (speed.ttft_p50_ms, speed.ttft_p99_ms) == (100.0, 300.0)
    assert speed.tokens_per_s_p50 == pytest.approx(10.0)
    assert speed.throughput_tokens_per_s == pytest.approx(8.5)


# ---------------------------------------------------------------------------------------------- request


def test_the_request_is_the_question_plus_the_options() -> None:
    question = Question("k-1", 1, "Make a thing", KeyGold(("POST /things",)), corpus="rest")
    plain = generate_request(question, RequestOptions())
    assert (plain.instruction, plain.request_id, list(plain.retrieval.corpora)) == ("Make a thing", "k-1", ["rest"])
    assert plain.retrieval.mode == pb.RETRIEVAL_MODE_HYBRID and plain.prompt_format == pb.PROMPT_FORMAT_UNSPECIFIED
    assert not plain.retrieval.HasField("top_k") and not plain.sampling.HasField("max_tokens")
    assert not plain.sampling.HasField("temperature")

    options = RequestOptions(
        mode="keyword",
        top_k=5,
        prompt_format="openfunctions_v2",
        corpora=("a", "b"),
        max_tokens=32,
        temperature=0.0,
        seed=7,
    )
    full = generate_request(question, options)
    assert list(full.retrieval.corpora) == ["a", "b"] and full.retrieval.top_k == 5
    assert full.prompt_format == pb.PROMPT_FORMAT_OPENFUNCTIONS_V2 and full.retrieval.mode == pb.RETRIEVAL_MODE_KEYWORD
    assert full.sampling.max_tokens == 32 and full.sampling.HasField("temperature") and full.sampling.seed == 7


def test_every_prompt_format_has_an_answer_style_and_a_flag() -> None:
    """A new prompt format (chat_tools) must be named in these tables, or answers in it go unread."""
    from apihelper.build.eval_answers_cli import FORMATS, MODES
    from apihelper.build.evaluation.calls import STYLE_OF_FORMAT
    from apihelper.build.evaluation.runner import PROMPT_FORMATS, RETRIEVAL_MODES
    from apihelper.service.prompts import PromptFormat

    assert set(STYLE_OF_FORMAT) == set(PromptFormat)
    assert set(FORMATS) == set(PROMPT_FORMATS) == {"auto", *(f.value for f in PromptFormat)}
    assert set(MODES) == set(RETRIEVAL_MODES)
