import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrievalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_MODE_UNSPECIFIED: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_HYBRID: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_DENSE: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_KEYWORD: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_NONE: _ClassVar[RetrievalMode]

class PromptFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_FORMAT_UNSPECIFIED: _ClassVar[PromptFormat]
    PROMPT_FORMAT_GORILLA_V0: _ClassVar[PromptFormat]
    PROMPT_FORMAT_OPENFUNCTIONS_V2: _ClassVar[PromptFormat]
    PROMPT_FORMAT_CHAT_TOOLS: _ClassVar[PromptFormat]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_VALID: _ClassVar[Verdict]
    VERDICT_WRONG_ARGUMENTS: _ClassVar[Verdict]
    VERDICT_UNKNOWN_API: _ClassVar[Verdict]
    VERDICT_UNPARSEABLE: _ClassVar[Verdict]
    VERDICT_UNCHECKED: _ClassVar[Verdict]
    VERDICT_UNGROUNDED: _ClassVar[Verdict]

class ApiChoice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_CHOICE_UNSPECIFIED: _ClassVar[ApiChoice]
    API_CHOICE_MODEL: _ClassVar[ApiChoice]
    API_CHOICE_RETRIEVER: _ClassVar[ApiChoice]
RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode
RETRIEVAL_MODE_HYBRID: RetrievalMode
RETRIEVAL_MODE_DENSE: RetrievalMode
RETRIEVAL_MODE_KEYWORD: RetrievalMode
RETRIEVAL_MODE_NONE: RetrievalMode
PROMPT_FORMAT_UNSPECIFIED: PromptFormat
PROMPT_FORMAT_GORILLA_V0: PromptFormat
PROMPT_FORMAT_OPENFUNCTIONS_V2: PromptFormat
PROMPT_FORMAT_CHAT_TOOLS: PromptFormat
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
VERDICT_UNSPECIFIED: Verdict
VERDICT_VALID: Verdict
VERDICT_WRONG_ARGUMENTS: Verdict
VERDICT_UNKNOWN_API: Verdict
VERDICT_UNPARSEABLE: Verdict
VERDICT_UNCHECKED: Verdict
VERDICT_UNGROUNDED: Verdict
API_CHOICE_UNSPECIFIED: ApiChoice
API_CHOICE_MODEL: ApiChoice
API_CHOICE_RETRIEVER: ApiChoice

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrievalOptions(_message.Message):
    __slots__ = ("corpora", "top_k", "mode")
    CORPORA_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    corpora: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    mode: RetrievalMode
    def __init__(self, corpora: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("instruction", "retrieval", "sampling", "prompt_format", "request_id", "suppress_repeated_lines", "constrain_calls", "api_choice")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_REPEATED_LINES_FIELD_NUMBER: _ClassVar[int]
    CONSTRAIN_CALLS_FIELD_NUMBER: _ClassVar[int]
    API_CHOICE_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    retrieval: RetrievalOptions
    sampling: SamplingParams
    prompt_format: PromptFormat
    request_id: str
    suppress_repeated_lines: bool
    constrain_calls: bool
    api_choice: ApiChoice
    def __init__(self, instruction: _Optional[str] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., prompt_format: _Optional[_Union[PromptFormat, str]] = ..., request_id: _Optional[str] = ..., suppress_repeated_lines: _Optional[bool] = ..., constrain_calls: _Optional[bool] = ..., api_choice: _Optional[_Union[ApiChoice, str]] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("key", "corpus", "title", "score", "text")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CORPUS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    corpus: str
    title: str
    score: float
    text: str
    def __init__(self, key: _Optional[str] = ..., corpus: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Sources(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    def __init__(self, sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("retrieval_ms", "queue_ms", "first_token_ms", "total_ms", "embed_ms", "search_ms")
    RETRIEVAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    retrieval_ms: float
    queue_ms: float
    first_token_ms: float
    total_ms: float
    embed_ms: float
    search_ms: float
    def __init__(self, retrieval_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., embed_ms: _Optional[float] = ..., search_ms: _Optional[float] = ...) -> None: ...

class ApiCall(_message.Message):
    __slots__ = ("raw", "name", "arguments", "matched_key", "verdict", "reasons", "retrieved", "suggestion")
    class ArgumentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RAW_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_KEY_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    raw: str
    name: str
    arguments: _containers.ScalarMap[str, str]
    matched_key: str
    verdict: Verdict
    reasons: _containers.RepeatedScalarFieldContainer[str]
    retrieved: bool
    suggestion: str
    def __init__(self, raw: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[_Mapping[str, str]] = ..., matched_key: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reasons: _Optional[_Iterable[str]] = ..., retrieved: _Optional[bool] = ..., suggestion: _Optional[str] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "api_calls", "text", "request_id", "model", "prompt_format", "fields", "verdict", "verdict_reasons", "suppressed_lines", "sampling", "corpus_versions", "calls_constrained", "api_choice")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CorpusVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    API_CALLS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_REASONS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_LINES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CORPUS_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CALLS_CONSTRAINED_FIELD_NUMBER: _ClassVar[int]
    API_CHOICE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    api_calls: _containers.RepeatedCompositeFieldContainer[ApiCall]
    text: str
    request_id: str
    model: str
    prompt_format: PromptFormat
    fields: _containers.ScalarMap[str, str]
    verdict: Verdict
    verdict_reasons: _containers.RepeatedScalarFieldContainer[str]
    suppressed_lines: int
    sampling: SamplingParams
    corpus_versions: _containers.ScalarMap[str, str]
    calls_constrained: bool
    api_choice: ApiChoice
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., api_calls: _Optional[_Iterable[_Union[ApiCall, _Mapping]]] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt_format: _Optional[_Union[PromptFormat, str]] = ..., fields: _Optional[_Mapping[str, str]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., verdict_reasons: _Optional[_Iterable[str]] = ..., suppressed_lines: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., corpus_versions: _Optional[_Mapping[str, str]] = ..., calls_constrained: _Optional[bool] = ..., api_choice: _Optional[_Union[ApiChoice, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("sources", "delta", "completion")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    sources: Sources
    delta: TextDelta
    completion: Completion
    def __init__(self, sources: _Optional[_Union[Sources, _Mapping]] = ..., delta: _Optional[_Union[TextDelta, _Mapping]] = ..., completion: _Optional[_Union[Completion, _Mapping]] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("instruction", "retrieval")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    retrieval: RetrievalOptions
    def __init__(self, instruction: _Optional[str] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("sources", "timings")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    timings: Timings
    def __init__(self, sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class ListCorporaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Corpus(_message.Message):
    __slots__ = ("name", "format", "doc_count", "source", "embedding_model", "last_ingest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DOC_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_INGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    doc_count: int
    source: str
    embedding_model: str
    last_ingest: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., doc_count: _Optional[int] = ..., source: _Optional[str] = ..., embedding_model: _Optional[str] = ..., last_ingest: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCorporaResponse(_message.Message):
    __slots__ = ("corpora",)
    CORPORA_FIELD_NUMBER: _ClassVar[int]
    corpora: _containers.RepeatedCompositeFieldContainer[Corpus]
    def __init__(self, corpora: _Optional[_Iterable[_Union[Corpus, _Mapping]]] = ...) -> None: ...
