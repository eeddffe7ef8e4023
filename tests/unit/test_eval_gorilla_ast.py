"""Tests of the Gorilla AST evaluator: its rules on hand-made records and answers, and Gorilla's published
TorchHub figures reproduced from the released Gorilla-7B answers (those skip without the shared corpora)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apihelper.build.evaluation.gorilla_ast import (
    ApiDatabase,
    GorillaLabel,
    Hub,
    Outcome,
    cut_api_call,
    label_answer,
    label_responses,
    match_api,
    read_jsonl,
    score,
)
from tests.support import shared_corpus


def apibench() -> Path:
    """../shared/corpora/apibench, or skip the test saying it is absent."""
    return shared_corpus("apibench", "gorilla_eval_torchhub").parent


TORCH_RECORDS = [
    {
        "domain": "Classification",
        "api_call": "torch.hub.load(repo_or_dir='pytorch/vision', model='vgg13', pretrained=True)",
    },
    {
        "domain": "Detection",
        "api_call": "torch.hub.load(repo_or_dir='pytorch/vision', model='vgg13_bn', pretrained=True)",
    },
    {"domain": "Speech", "api_call": "torch.hub.load(repo_or_dir='snakers4/silero-models', model='silero_stt')"},
    {"domain": "Quoted", "api_call": 'torch.hub.load(repo_or_dir="owner/quoted", model="net")'},
]


def torch_db() -> ApiDatabase:
    return ApiDatabase.from_entries(TORCH_RECORDS, Hub.TORCHHUB)


def answer(api_call: str) -> str:
    """An answer in TorchHub's dict-like layout, as Gorilla-7B writes it."""
    return f"{{'domain': 'x', 'api_call': \"{api_call}\", 'api_provider': 'PyTorch', 'explanation': 'e (see)'}}"


@pytest.mark.parametrize(
    ("text", "hub", "expected"),
    [
        ("{'api_call': \"m = f(a)\", 'api_provider': 'P'}", Hub.TORCHHUB, '"m = f(a)'),
        ("api_call f(a) g(b) api_provider", Hub.TORCHHUB, "(a) g(b)"),  # no ":": from index 2
        ("{'api_call': 'f(a', 'api_provider': 'P'}", Hub.TORCHHUB, "'f(a', "),  # no ")": last char dropped
        ("api_call: x(1) api_call: y(2)", Hub.TORCHHUB, "x(1)"),  # only the text up to a second api_call
        ("no call here", Hub.TORCHHUB, None),
        ("no call here", Hub.HUGGINGFACE, "no call here"),
        ("no call here", Hub.TENSORFLOWHUB, "no call here"),
    ],
)
def test_cut_api_call(text: str, hub: Hub, expected: str | None) -> None:
    assert cut_api_call(text, hub) == expected


def test_torchhub_key_arguments_are_repo_and_model_values_with_single_quotes_stripped() -> None:
    records = torch_db().records
    assert records[0].function_name == b"torch.hub.load"
    assert records[0].key_arguments == ("pytorch/vision", "vgg13")
    assert records[3].key_arguments == ('"owner/quoted"', '"net"')  # only single quotes are stripped


@pytest.mark.parametrize(
    ("api_call", "gold", "outcome", "index"),
    [
        ("model = torch.hub.load('snakers4/silero-models', 'silero_stt', language='en')", "Speech", Outcome.CORRECT, 2),
        ("model = torch.hub.load('snakers4/silero-models', 'silero_stt')", "Detection", Outcome.ERROR, 2),
        ("model = torch.hub.load('snakers4/silero-models', 'silero_tts')", "Speech", Outcome.HALLUCINATION, None),
        ("model = torchvision.models.vgg13(pretrained=True)", "Classification", Outcome.HALLUCINATION, None),
        # The first record in database order whose keys occur wins, even as a substring: vgg13 before vgg13_bn.
        ("model = torch.hub.load('pytorch/vision', 'vgg13_bn', pretrained=True)", "Detection", Outcome.ERROR, 0),
        # Double-quoted record values keep their quotes, so single-quoted answers do not match them.
        ("torch.hub.load('owner/quoted', 'net')", "Quoted", Outcome.HALLUCINATION, None),
    ],
)
def test_label_torchhub_answers(api_call: str, gold: str, outcome: Outcome, index: int | None) -> None:
    label = label_answer(answer(api_call), torch_db(), gold)
    assert (label.outcome, label.matched_index) == (outcome, index)


def test_answer_without_api_call_is_neither_correct_nor_hallucinated_for_torchhub() -> None:
    label = label_answer("{'domain': 'Speech', 'api': 'torch.hub.load(snakers4/silero-models)'}", torch_db(), "Speech")
    assert label == GorillaLabel(Outcome.NO_API_CALL, None, None)


def test_unmatched_head_falls_back_to_the_last_sub_tree() -> None:
    # A quote before the call turns it into a string: no sub-tree is headed by torch.hub.load, and the
    # original's loop variable is left on the last sub-tree, which here holds the whole text.
    api_call = "'model = torch.hub.load(\\'snakers4/silero-models\\', \\'silero_stt\\')"
    assert match_api(api_call, torch_db()) == 2
    assert match_api("'model = something_else()", torch_db()) is None


def test_the_first_sub_tree_headed_by_the_name_is_tested_in_stack_order() -> None:
    # Children are popped right to left, so of two calls the later one is found first.
    api_call = "torch.hub.load('snakers4/silero-models', 'x'); torch.hub.load('pytorch/vision', 'vgg13')"
    assert match_api(api_call, torch_db()) == 0


def test_huggingface_keys_are_keyword_values_and_positional_texts() -> None:
    records = [
        {"domain": "VQA", "api_call": "pipeline('visual-question-answering', model='microsoft/git-base-vqav2')"},
        {"domain": "Features", "api_call": "AutoModel.from_pretrained('YituTech/conv-bert-base')"},
        {"domain": "None", "api_call": "SentimentModel()"},
    ]
    database = ApiDatabase.from_entries(records, Hub.HUGGINGFACE)
    assert database.records[0].key_arguments == ("visual-question-answering", "microsoft/git-base-vqav2")
    assert not database.records[2].matchable
    vqa = "pipe = pipeline('visual-question-answering', model='microsoft/git-base-vqav2')"
    assert label_answer(vqa, database, "VQA").outcome is Outcome.CORRECT  # whole text parsed: no api_call
    assert label_answer("pipeline(model='microsoft/git-base-vqav2')", database, "VQA").outcome is Outcome.HALLUCINATION
    assert label_answer("SentimentModel()", database, "None").outcome is Outcome.HALLUCINATION


def test_tensorflowhub_keeps_keyword_arguments_other_than_model_whole() -> None:
    url = "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5"
    records = [{"domain": "Image feature vector", "api_call": f"hub.KerasLayer('{url}', trainable=False)"}]
    database = ApiDatabase.from_entries(records, Hub.TENSORFLOWHUB)
    assert database.records[0].key_arguments == (url, "trainable=False")
    exact = f"{{'api_call': \"hub.KerasLayer('{url}', trainable=False)\", 'api_provider': 'TensorFlow Hub'}}"
    spaced = f"{{'api_call': \"hub.KerasLayer('{url}', trainable = False)\", 'api_provider': 'TensorFlow Hub'}}"
    assert label_answer(exact, database, "Image feature vector").outcome is Outcome.CORRECT
    assert label_answer(spaced, database, "Image feature vector").outcome is Outcome.HALLUCINATION


def test_score_rates_are_over_all_answers() -> None:
    labels = [GorillaLabel(outcome, None, None) for outcome in (Outcome.CORRECT,) * 5 + (Outcome.HALLUCINATION,) * 2]
    labels += [GorillaLabel(Outcome.ERROR, 0, "x"), GorillaLabel(Outcome.NO_API_CALL, None, None)]
    result = score(labels)
    assert (result.n, result.n_correct, result.n_hallucination, result.n_error, result.n_no_api_call) == (9, 5, 2, 1, 1)
    assert result.accuracy == pytest.approx(5 / 9)
    assert result.hallucination == pytest.approx(2 / 9)
    assert result.error == pytest.approx(2 / 9)
    with pytest.raises(ValueError):
        score([])


def test_response_without_text_counts_in_the_denominator_only() -> None:
    labels = label_responses(
        [{"question_id": 1}, {"question_id": 2, "text": answer("torch.hub.load('a', 'b')")}],
        ["Speech", "Speech"],
        torch_db(),
    )
    assert [label.outcome for label in labels] == [Outcome.NO_API_CALL, Outcome.HALLUCINATION]


def test_every_database_record_is_matchable_by_its_own_call() -> None:
    for hub, name in [
        (Hub.TORCHHUB, "torchhub"),
        (Hub.HUGGINGFACE, "huggingface"),
        (Hub.TENSORFLOWHUB, "tensorflowhub"),
    ]:
        database = ApiDatabase.from_jsonl(apibench() / f"{name}_api.jsonl", hub)
        for index, record in enumerate(database.records):
            if record.matchable:
                found = match_api(record.api_call, database)
                assert found is not None and found <= index, (hub, index, record.api_call)


PUBLISHED = {
    ("FT", "0_shot"): (0.758, 0.161),
    ("FT", "bm25"): (0.446, 0.172),
    ("FT", "gpt_index"): (0.774, 0.054),
    ("FT", "oracle"): (0.591, 0.392),
    ("RT", "bm25"): (0.500, 0.059),
    ("RT", "gpt_index"): (0.769, 0.032),
    ("RT", "oracle"): (0.930, 0.070),
}


def torchhub_labels(model: str, setting: str) -> list[GorillaLabel]:
    database = ApiDatabase.from_jsonl(apibench() / "torchhub_api.jsonl", Hub.TORCHHUB)
    gold = [str(question["api_data"]["domain"]) for question in read_jsonl(apibench() / "torchhub_eval.json")]
    responses = (
        apibench() / "gorilla_eval_torchhub" / "responses" / f"response_torchhub_Gorilla_{model}_{setting}.jsonl"
    )
    return label_responses(read_jsonl(responses), gold, database)


@pytest.mark.parametrize(("model", "setting"), sorted(PUBLISHED))
def test_published_torchhub_figures_are_reproduced(model: str, setting: str) -> None:
    result = score(torchhub_labels(model, setting))
    accuracy, hallucination = PUBLISHED[(model, setting)]
    assert result.n == 186
    assert result.accuracy == pytest.approx(accuracy, abs=0.005)
    assert result.hallucination == pytest.approx(hallucination, abs=0.005)


def test_rt_zero_shot_answers_have_no_api_call_field() -> None:
    result = score(torchhub_labels("RT", "0_shot"))
    assert result.n_no_api_call == result.n == 186


def test_hand_made_answers_against_the_huggingface_and_tensorflowhub_databases() -> None:
    hf = ApiDatabase.from_jsonl(apibench() / "huggingface_api.jsonl", Hub.HUGGINGFACE)
    call = "model = AutoModel.from_pretrained('dmis-lab/biobert-v1.1')"
    known = f"{{'domain': 'x', 'api_call': \"{call}\", 'api_provider': 'Hugging Face'}}"
    label = label_answer(known, hf, None)
    assert label.matched_index is not None and label.outcome is Outcome.ERROR  # matched; no gold domain given
    assert "dmis-lab/biobert-v1.1" in hf.records[label.matched_index].key_arguments
    invented = known.replace("dmis-lab/biobert-v1.1", "nobody/no-such-model")
    assert label_answer(invented, hf, None).outcome is Outcome.HALLUCINATION
    tf = ApiDatabase.from_jsonl(apibench() / "tensorflowhub_api.jsonl", Hub.TENSORFLOWHUB)
    url = "https://tfhub.dev/google/universal-sentence-encoder/4"
    label = label_answer(f"embed = hub.load('{url}')", tf, None)
    assert label.matched_index is not None and tf.records[label.matched_index].key_arguments == (url,)
