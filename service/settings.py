"""Service settings: one frozen object, read once in ``service.__main__`` and passed down.

Sources, later ones winning: defaults < TOML file (``--config``; top-level keys or a
``[service]`` table) < ``APIHELPER_<NAME>`` environment variables < command-line flags.
Nothing here runs at import time; ``load_settings`` takes the environment as an argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apihelper.errors import ConfigurationError
from apihelper.service.engine.choice import EngineKind
from apihelper.service.prompts import PromptFormat

ENV_PREFIX = "APIHELPER_"


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = "127.0.0.1"
    port: int = 50051  # gRPC; 0 picks a free port (tests)
    http_port: int = 8000  # HTTP/JSON, SSE, OpenAI-compatible API and the web app; 0 disables
    mcp: bool = True  # the MCP server (tools for coding agents) at /mcp on the HTTP port (--no-mcp: off)
    reflection: bool = True
    # Security: a bearer token (or a file holding it); TLS from PEM files, mutual TLS with a client CA
    auth_token: str = dataclasses.field(default="", repr=False)
    auth_token_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: clients must present a certificate signed by this CA
    # Transport limits
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC messages and HTTP request bodies
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # HTTP/2 streams one connection may have open at once (gRPC's grpc.max_concurrent_streams):
    # below max_concurrent_streams, so one connection cannot take every Generate slot.
    max_streams_per_connection: int = 32
    # A gRPC connection is asked to go away (GOAWAY) after this long, and closed once its streams
    # have had max_deadline_seconds to finish: the HTTP/2 streams of stalled calls, which the
    # transport keeps until their connection closes, go with it. 0: connections live for ever.
    max_connection_age_seconds: float = 1800.0
    # A stream whose next message the client has not taken for this long ends (its engine request
    # is aborted): a client that stops reading holds a slot no longer than this.
    stream_stall_timeout_seconds: float = 10.0
    # Health Watch streams at once (more get RESOURCE_EXHAUSTED); each ends after the timeout (the
    # client watches again).
    max_health_watches: int = 256
    health_watch_timeout_seconds: float = 300.0
    # HTTP front end limits (docs/security.md); they hold without a proxy in front.
    http_max_header_bytes: int = 16384  # a larger header block: 431
    http_max_headers: int = 100  # more header fields: 431
    http_header_timeout_seconds: float = 10.0  # a request's headers must arrive within this: 408
    http_keepalive_timeout_seconds: float = 5.0  # an idle keep-alive connection is closed after this
    http_body_timeout_seconds: float = 30.0  # a request's body must arrive within this (and its deadline): 408
    http_max_connections: int = 512  # open HTTP connections; one more: 503 (kept under half the fd limit)
    http_max_small_body_bytes: int = 65536  # bodies of the routes that take an instruction, not tools
    # Bytes of request bodies still arriving, over every connection; a chunk past it: 429, closed.
    http_max_pending_body_bytes: int = 64 * 1024 * 1024
    # Host header allow-list (DNS rebinding): comma-separated names; "" the loopback names and the
    # bound address; "*" any host.
    http_allowed_hosts: str = ""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # Prometheus /metrics over HTTP; 0 disables
    # Retrieval: a Milvus Lite directory, or http(s)://host:19530 for a Milvus server
    milvus_uri: str = "data/milvus.db"
    milvus_token: str = dataclasses.field(default="", repr=False)
    # Query adapter over the embedding model (apihelper.retriever.adapter): none | bundled | a file
    # (none: blind leave-one-distribution-out figures show no gain from it, docs/retrieval.md)
    query_adapter: str = "none"
    # Second-stage re-ranker of hybrid results (apihelper.retriever.rerank, LODO-chosen weights)
    retrieval_rerank: bool = False
    # Engine
    # auto: tensorrt_llm for an engine directory, openvino for a GGUF file or an OpenVINO IR on a
    # CPU (where openvino-genai is installed), transformers otherwise (apihelper.service.engine.choice)
    engine: EngineKind = EngineKind.AUTO  # auto | transformers | openvino | tensorrt_llm
    model: str = "data/dev-model"  # Hugging Face directory, GGUF file or staged GGUF, engine directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    prompt_format: PromptFormat | None = None  # None: from the model's manifest
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16/float16 on CUDA
    max_batch_size: int = 8  # sequences the engine generates for at once
    max_batch_tokens: int = 512  # tokens per engine step (prefill chunks + decodes)
    kv_cache_blocks: int = 0  # paged KV cache size in blocks; 0: max_batch_size full contexts
    kv_block_size: int = 32
    num_threads: int = 0  # torch's CPU threads for the transformers engine; 0: one per core
    # Constrained calls (constrain_calls): xgrammar in the transformers engine; TensorRT-LLM's
    # xgrammar backend, loaded with the engine (needs a fast HF tokenizer in the engine directory).
    guided_decoding: bool = True
    # TensorRT-LLM: share of free GPU memory for the paged KV cache
    kv_cache_free_gpu_memory_fraction: float = 0.9
    # Reuse the KV blocks of shared prompt prefixes (TensorRT-LLM block reuse, OpenVINO prefix caching)
    enable_block_reuse: bool = True
    # Request limits and defaults
    max_concurrent_streams: int = 64  # Generate streams at once; more get RESOURCE_EXHAUSTED
    # Generate streams of one client address at once, over all its connections (an IPv6 /64 counts
    # as one address); more get RESOURCE_EXHAUSTED. 0: no such limit (behind a proxy every client
    # shares its address).
    max_streams_per_peer: int = 32
    default_deadline_seconds: float = 300.0  # for calls that set no deadline
    max_deadline_seconds: float = 600.0  # longer client deadlines are cut to this
    max_instruction_bytes: int = 8192
    default_top_k: int = 3
    max_top_k: int = 50
    default_max_tokens: int = 128
    # Where the documented APIs are served, beside each OpenAPI spec's own servers: comma-separated
    # base URLs. An answer's call to an absolute URL on any other host is not "valid".
    api_base_urls: str = ""
    # Lifecycle
    event_loop: str = "auto"  # auto: uvloop where installed | uvloop | asyncio
    shutdown_grace_seconds: float = 10.0
    health_check_interval_seconds: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name in ("port", "http_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigurationError(f"{name} must be 0..65535, got {getattr(self, name)}")
        if not 0.0 < self.kv_cache_free_gpu_memory_fraction <= 1.0:
            raise ConfigurationError("kv_cache_free_gpu_memory_fraction must be in (0, 1]")
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigurationError(f"event_loop must be auto, uvloop or asyncio, got {self.event_loop!r}")
        for name, kind in _CHOICES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(f"{name} must be a {kind.__name__}, got {value!r}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigurationError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ConfigurationError("default_top_k must be between 1 and max_top_k")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigurationError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigurationError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.auth_token and self.auth_token_file:
            raise ConfigurationError("set auth_token or auth_token_file, not both")
        if self.max_concurrent_streams < 1 or self.default_deadline_seconds <= 0:
            raise ConfigurationError("max_concurrent_streams and default_deadline_seconds must be positive")
        if self.max_deadline_seconds < self.default_deadline_seconds:
            raise ConfigurationError("max_deadline_seconds must be at least default_deadline_seconds")
        if self.max_streams_per_peer < 0:
            raise ConfigurationError("max_streams_per_peer must be >= 0 (0: no limit per client address)")
        if self.max_streams_per_connection < 1 or self.max_health_watches < 1:
            raise ConfigurationError("max_streams_per_connection and max_health_watches must be positive")
        if self.max_connection_age_seconds < 0:
            raise ConfigurationError("max_connection_age_seconds must be >= 0 (0: no limit)")
        if self.stream_stall_timeout_seconds <= 0 or self.health_watch_timeout_seconds <= 0:
            raise ConfigurationError("stream_stall_timeout_seconds and health_watch_timeout_seconds must be positive")
        if self.num_threads < 0:
            raise ConfigurationError("num_threads must be >= 0 (0: one per core)")
        if self.max_instruction_bytes < 1 or self.default_max_tokens < 1:
            raise ConfigurationError("max_instruction_bytes and default_max_tokens must be positive")
        _check_http_limits(self)
        for url in api_base_urls(self):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(f"api_base_urls: {url!r} is not an http(s) URL with a host")


def _check_http_limits(settings: Settings) -> None:
    positive = ("http_max_header_bytes", "http_max_headers", "http_max_connections", "http_max_small_body_bytes")
    for name in (*positive, "http_max_pending_body_bytes"):
        if getattr(settings, name) < 1:
            raise ConfigurationError(f"{name} must be positive")
    for name in ("http_header_timeout_seconds", "http_keepalive_timeout_seconds", "http_body_timeout_seconds"):
        if not getattr(settings, name) > 0:
            raise ConfigurationError(f"{name} must be positive")


# Settings that hold a choice, and the enum each is read as (one-line errors naming the choices).
_CHOICES: dict[str, type[enum.Enum]] = {"engine": EngineKind, "prompt_format": PromptFormat}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def api_base_urls(settings: Settings) -> tuple[str, ...]:
    """The configured base URLs (``api_base_urls``), blanks dropped."""
    return tuple(u.strip() for u in settings.api_base_urls.split(",") if u.strip())


def read_auth_token(settings: Settings) -> str:
    """The bearer token, from the setting or its file ("" when auth is off)."""
    if not settings.auth_token_file:
        return settings.auth_token
    return read_token_file(settings.auth_token_file, "auth_token_file")


def read_token_file(path: str, option: str) -> str:
    """The bearer token a file holds (white space around it stripped); an unreadable or empty
    file is a ``ConfigurationError`` that names ``option``, the setting that pointed to it."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{option}: {exc.strerror}: {path}") from exc
    if not token:
        raise ConfigurationError(f"{option} {path} is empty")
    return token


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    parser = _parser()
    args = parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_from_toml(args.config))
    for f in fields(Settings):
        env_value = environ.get(ENV_PREFIX + f.name.upper())
        if env_value is not None:
            values[f.name] = env_value
    for f in fields(Settings):
        cli_value = getattr(args, f.name, None)
        if cli_value is not None:
            values[f.name] = cli_value
    return Settings(**{name: _coerce(name, value) for name, value in values.items()})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apihelper-serve",
        description="Serve retrieval-augmented API-call generation over gRPC and HTTP.",
        epilog=f"Every setting can also come from a TOML file or {ENV_PREFIX}<NAME> variables.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            default = f.default.value if isinstance(f.default, enum.Enum) else f.default
            choices = _CHOICES.get(f.name)
            shown = f" (one of {', '.join(str(m.value) for m in choices)})" if choices else ""
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=f"default: {default!r}{shown}")
    return parser


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc
    table = data.get("service", data)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(table) - known - {"service"})
    if unknown:
        raise ConfigurationError(f"{path}: unknown settings {', '.join(unknown)}")
    return {k: v for k, v in table.items() if k in known}


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    choice = _CHOICES.get(name)
    if choice is not None:
        if value == "" and "None" in str(kind):
            return None
        try:
            return choice(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in choice)
            raise ConfigurationError(f"setting {name}: {value!r} is not one of {allowed}") from None
    if not isinstance(value, str):
        return value
    try:
        if kind in ("bool", bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}: cannot read {value!r} as {kind}") from exc
    return value
