from __future__ import annotations

from pathlib import Path

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.settings import Settings, load_settings, read_auth_token, read_token_file


def test_defaults() -> None:
    s = load_settings([], {})
    assert s == Settings()
    assert s.max_instruction_bytes == 8192


def test_sources_in_order_of_precedence(tmp_path: Path) -> None:
    config = tmp_path / "apihelper.toml"
    config.write_text('[service]\nport = 6000\nmilvus_uri = "from-toml"\nreflection = false\ndefault_top_k = 4\n')
    env = {"APIHELPER_MILVUS_URI": "from-env", "APIHELPER_DEFAULT_TOP_K": "7"}
    s = load_settings(["--config", str(config), "--default-top-k", "9"], env)
    assert s.port == 6000  # TOML over default
    assert s.milvus_uri == "from-env"  # env over TOML
    assert s.default_top_k == 9  # CLI over env
    assert s.reflection is False


def test_bool_flags_and_env() -> None:
    assert load_settings(["--no-reflection"], {}).reflection is False
    assert load_settings([], {"APIHELPER_REFLECTION": "off"}).reflection is False
    assert load_settings([], {}).retrieval_rerank is False  # the second stage is opt-in
    assert load_settings(["--retrieval-rerank"], {}).retrieval_rerank is True
    assert load_settings([], {"APIHELPER_RETRIEVAL_RERANK": "true"}).retrieval_rerank is True


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "70000"], {}),
        ([], {"APIHELPER_PORT": "not-a-number"}),
        (["--device", "tpu"], {}),
        (["--default-top-k", "0"], {}),
        (["--max-deadline-seconds", "100"], {}),  # below default_deadline_seconds (300)
        (["--stream-stall-timeout-seconds", "0"], {}),
        (["--max-streams-per-connection", "0"], {}),
        ([], {"APIHELPER_MAX_HEALTH_WATCHES": "0"}),
        (["--health-watch-timeout-seconds", "-1"], {}),
        (["--max-connection-age-seconds", "-5"], {}),
    ],
)
def test_bad_settings_are_configuration_errors(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        load_settings(argv, env)


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigurationError, match="prot"):
        load_settings(["--config", str(config)], {})


def test_token_is_not_in_repr() -> None:
    assert "s3cret" not in repr(Settings(milvus_token="s3cret"))


def test_api_base_urls_are_a_comma_separated_list_of_http_urls() -> None:
    from apihelper.service.settings import api_base_urls

    settings = load_settings(["--api-base-urls", "https://api.corp.example/v1, http://10.0.0.5:8080,"], {})
    assert api_base_urls(settings) == ("https://api.corp.example/v1", "http://10.0.0.5:8080")
    assert api_base_urls(Settings()) == ()
    for bad in ("api.corp.example", "ftp://x.example", "https://"):
        with pytest.raises(ConfigurationError, match="api_base_urls"):
            load_settings([], {"APIHELPER_API_BASE_URLS": bad})


def test_choices_are_read_as_enums_from_every_source(tmp_path: Path) -> None:
    from apihelper.service.engine.choice import EngineKind
    from apihelper.service.prompts import PromptFormat

    assert Settings().engine is EngineKind.AUTO and Settings().prompt_format is None
    s = load_settings(["--engine", "openvino", "--prompt-format", "chat_tools"], {})
    assert s.engine is EngineKind.OPENVINO and s.prompt_format is PromptFormat.CHAT_TOOLS
    assert load_settings([], {"APIHELPER_ENGINE": "tensorrt_llm"}).engine is EngineKind.TENSORRT_LLM
    assert load_settings([], {"APIHELPER_PROMPT_FORMAT": ""}).prompt_format is None
    config = tmp_path / "c.toml"
    config.write_text('engine = "transformers"\nprompt_format = "gorilla_v0"\n')
    s = load_settings(["--config", str(config)], {})
    assert s.engine is EngineKind.TRANSFORMERS and s.prompt_format is PromptFormat.GORILLA_V0


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--prompt-format", "bogus"], "gorilla_v0, openfunctions_v2, chat_tools"),
        (["--engine", "vllm"], "auto, transformers, openvino, tensorrt_llm"),
        (["--device", "cuda:x"], "cuda:N"),
    ],
)
def test_a_bad_choice_is_one_line_naming_the_choices(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings(argv, {})
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_every_device_the_engines_take_is_accepted(device: str) -> None:
    assert load_settings(["--device", device], {}).device == device


def test_serve_exits_2_with_one_line_before_opening_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from apihelper.service import __main__ as entry

    opened: list[str] = []

    async def serve(settings: Settings) -> None:  # the first thing that opens anything
        opened.append("serve")

    monkeypatch.setattr(entry, "serve", serve)
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["--prompt-format", "bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt_format" in err and "bogus" in err
    assert opened == []


def test_a_token_file_is_read_stripped_and_refused_when_missing_or_empty(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    settings = load_settings(["--auth-token-file", str(token)], {})
    assert read_auth_token(settings) == "s3cret"
    token.write_text("\n")
    with pytest.raises(ConfigurationError, match=r"^auth_token_file .* is empty"):
        read_auth_token(settings)
    with pytest.raises(ConfigurationError, match=r"^--auth-token-file: .*: .*missing"):
        read_token_file(str(tmp_path / "missing"), "--auth-token-file")
