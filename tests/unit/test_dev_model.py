"""The development model: builds fast, loads like any HF checkpoint, is reproducible."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apihelper.build.dev_model import SPECIAL_TOKENS, make_dev_model
from apihelper.service.engine.manifest import MANIFEST_NAME, read_manifest
from apihelper.service.prompts import PromptFormat
from tests.support import budget

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dev-model")
    make_dev_model(out)
    return out


def test_builds_quickly_and_writes_a_manifest(tmp_path: Path) -> None:
    started = time.perf_counter()
    manifest = make_dev_model(
        tmp_path,
        ["def list_sessions(limit: int = 10): ..."] * 20,
        prompt_format=PromptFormat.OPENFUNCTIONS_V2,
    )
    assert time.perf_counter() - started < budget(10.0)
    assert (tmp_path / MANIFEST_NAME).is_file()
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "generation_config.json").is_file()
    assert read_manifest(tmp_path) == manifest
    assert manifest.kind == "dev-model"
    assert manifest.random_weights is True
    assert manifest.prompt_format is PromptFormat.OPENFUNCTIONS_V2
    assert manifest.max_model_len == 2048
    assert manifest.details["corpus_chars"] > 0


def test_loads_with_auto_classes(dev_dir: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(dev_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dev_dir))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (SPECIAL_TOKENS)
    assert model.config.model_type == "llama"
    assert model.config.max_position_embeddings == 2048
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    text = "Create a session with image 'python:3.11' — ümläut, 日本語, 🙂"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id  # Llama-style leading <s>
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless

    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > len(ids)


def test_corpus_shapes_the_vocabulary(tmp_path: Path) -> None:
    word = " backendai_session_create_with_resources"
    make_dev_model(tmp_path / "plain")
    make_dev_model(tmp_path / "corpus", [word * 200])
    plain = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "plain"))
    trained = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "corpus"))
    assert len(trained(word).input_ids) < len(plain(word).input_ids)


def test_same_seed_same_model(tmp_path: Path) -> None:
    make_dev_model(tmp_path / "a", ["some corpus text"], seed=7)
    make_dev_model(tmp_path / "b", ["some corpus text"], seed=7)
    make_dev_model(tmp_path / "c", ["some corpus text"], seed=8)
    assert (tmp_path / "a/tokenizer.json").read_text() == (tmp_path / "b/tokenizer.json").read_text()
    weights = {
        name: transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / name)).state_dict() for name in "abc"
    }
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_greedy_generation_is_varied_text(dev_dir: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(dev_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dev_dir))
    ids = tokenizer("USER: list my sessions\nASSISTANT:").input_ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0][len(ids) :]
    assert len(set(out.tolist())) > 8  # a wide init: greedy does not repeat one token
    text = tokenizer.decode(out, skip_special_tokens=True)
    assert len(text) > 16 and "\ufffd" not in text
