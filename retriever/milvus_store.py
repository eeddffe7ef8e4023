"""The Milvus side of retrieval: the ONLY module that imports pymilvus.

One collection per corpus version, served under the alias ``apihelper_<corpus>`` (corpus names
``re.fullmatch`` ``[a-z][a-z0-9_]{0,62}``). Schema:

    pk            VARCHAR(64), primary: sha1 hex of the doc key (keys can be long); a view row's
                  is ``<sha1>:<n>``
    key           VARCHAR(4096): the doc key ("METHOD /path", "pkg.mod.Class.method", ...)
    view          INT16: 0 for the doc's own row, n >= 1 for the row of its n-th view
    title         VARCHAR(1024)
    text          VARCHAR(65535): what the model reads (cut at a UTF-8 boundary if needed)
    index_text    VARCHAR(65535): what the dense vector was made from (ApiDoc.index_text)
    keywords      VARCHAR(65535), analyzed: ``retriever.textnorm.keyword_terms(index_text)``
                  (identifiers split, stop words dropped, stemmed in Python, since Milvus Lite
                  has only the ``standard`` tokenizer and no stemmer)
    sparse        SPARSE_FLOAT_VECTOR: BM25 Function output over keywords (BM25 index)
    dense         FLOAT_VECTOR(dim): embedding of index_text (HNSW, COSINE)
    metadata      JSON
    content_hash  VARCHAR(64): ApiDoc.content_hash, compared by ingest to skip unchanged docs

Views (schema 3): a doc's ``ApiDoc.views`` (other ways the same API is described) are stored as
further rows carrying the doc's key and fields, each with the dense vector of its view text and
no keywords (BM25 sees each doc once). Dense search of a collection holding views (property
``apihelper.views``) collapses hits by key (a doc's best row, one hit per doc: over-fetched rows
collapsed, or Milvus grouping search where they hold too few docs); reading a corpus, counting and
hashing see the view-0 rows.

Corpus info (format, source, embedding model and dim, doc count, last ingest time) is kept as
*collection properties* ("apihelper.*" keys, set at creation and changed with
alter_collection_properties). That works on Milvus Lite and on a Milvus server, needs no extra
collection, and goes away with the collection it describes.

Versions: a (re-)ingest writes a *staged* collection ``apihelperv_<corpus>_v<n>`` (the docs that
did not change copied over with their vectors, the rest embedded), and only when it is complete
points the alias at it (``alter_alias``: one atomic step on Milvus Lite and on a server) and
drops the old one. A run that fails half-way leaves the corpus served, and counted, exactly as it
was; a corpus whose first ingest fails does not appear at all. Staged collections are not
corpora (their prefix differs); one left by a crash is dropped by the next ingest of its corpus.
A corpus made before versions (a plain ``apihelper_<corpus>`` collection) is replaced on its next
re-ingest: dropped, then the alias created, the one moment it is briefly absent.

Everything here blocks; the async retriever calls it through ``asyncio.to_thread``. pymilvus and
connection failures are turned into :class:`RetrieverUnavailableError` (messages carry the
operation and Milvus' reason, never the token or URI credentials).

Search: keyword queries go through the same ``keyword_terms`` as the stored keywords. Hybrid
search runs a dense and a BM25 search for candidates and fuses them here
(``retriever.fusion``, ``DEFAULT_FUSION`` unless the caller passes another), not with a Milvus
ranker; docs/retrieval.md has the numbers behind that choice. A search returns each hit's key
and content hash only; the docs come from an LRU of recently returned docs when the hash matches,
the others are read by primary key in one round trip.

Reading a whole corpus (``corpus_docs``, for the service's validation catalog, which needs the
APIs a search did not return) pages through it with a query iterator and rebuilds each ApiDoc
from the stored fields; the metadata comes back as the JSON it was stored as.

Schema versions: collections carry ``apihelper.schema_version``. Version 1 (BM25 straight over
index_text) is still searched, with un-normalised keyword queries; ingest rebuilds a collection
whose version is not the current one.

Milvus Lite differences handled here: reopened collections start released (loaded on first use),
sparse search accepts only ``drop_ratio_search=0``, and BM25 distances come back negative (best
first); keyword scores are reported as their absolute value so that higher is better everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from apihelper.errors import ConfigurationError, MissingDependencyError, RetrieverUnavailableError
from apihelper.retriever.fusion import DEFAULT_FUSION
from apihelper.retriever.textnorm import keyword_terms
from apihelper.retriever.types import ApiDoc, CorpusFormat, CorpusInfo, RetrievalMode, RetrievedDoc

_T = TypeVar("_T")
log = logging.getLogger(__name__)

COLLECTION_PREFIX = "apihelper_"  # the served name of a corpus: an alias (or a legacy collection)
STAGED_PREFIX = "apihelperv_"  # the collections holding corpus versions: apihelperv_<corpus>_v<n>
CORPUS_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # fullmatch: "$" would let "name\n" pass
SCHEMA_VERSION = "3"
MAX_VIEWS = 16  # views stored per doc (further ones are left out)
OVERFETCH = 4  # a views collection's dense search reads this many rows per hit wanted, then collapses

MAX_KEY_BYTES = 4096
MAX_TITLE_BYTES = 1024
MAX_TEXT_BYTES = 65535
MAX_METADATA_BYTES = 60000  # Milvus rejects JSON values over 64 KiB by default
# Candidates each side of a hybrid search fetches before fusion (at least top_k).
HYBRID_CANDIDATES = DEFAULT_FUSION.candidates
OUTPUT_FIELDS = ["key", "title", "text", "index_text", "metadata"]  # every ApiDoc field
# What a search returns per hit: the doc itself comes from the store's doc cache, or one ``get`` by
# primary key for the hits it lacks (docs are kilobytes of JSON: decoding 2 x 50 per hybrid query
# cost ~3 ms a search on 2 cores).
HIT_FIELDS = ["key", "content_hash"]
DOC_CACHE_SIZE = 4096  # docs kept by (corpus, key), checked against each hit's content_hash
# Every stored field but the BM25 function's output (Milvus computes it from keywords).
COPIED_FIELDS = ["pk", "key", "view", "title", "text", "index_text", "keywords", "dense", "metadata", "content_hash"]
# Rows per page when a whole corpus is read (corpus_docs): about 1000 x a few KB per round trip.
READ_BATCH = 1000
# How long a search waits for a collection that another thread is loading before it answers
# UNAVAILABLE. After a Milvus restart the health check reloads the collections this process was
# using (seconds, minutes for big ones on a server); a request should fail fast meanwhile, as
# health says NOT_SERVING, rather than hang into its deadline.
LOAD_WAIT_SECONDS = 2.0

_PROP = "apihelper."
_P_FORMAT = _PROP + "format"
_P_SOURCE = _PROP + "source"
_P_MODEL = _PROP + "embedding_model"
_P_DIM = _PROP + "embedding_dim"
_P_COUNT = _PROP + "doc_count"
_P_LAST = _PROP + "last_ingest"
_P_SCHEMA = _PROP + "schema_version"
_P_VIEWS = _PROP + "views"  # "1" when the collection holds view rows (schema 3)


def valid_corpus_name(name: str) -> bool:
    return bool(CORPUS_NAME.fullmatch(name))


def check_corpus_name(name: str) -> None:
    """Raise ConfigurationError for a name that cannot be a corpus (used by ingest)."""
    if not valid_corpus_name(name):
        raise ConfigurationError(
            f"invalid corpus name {name!r}: use 1-63 characters, lower-case letters, digits and '_', "
            "starting with a letter"
        )


def collection_name(corpus: str) -> str:
    return COLLECTION_PREFIX + corpus


def shown_source(source: str) -> str:
    """A corpus' source as listed: an absolute path (stored by an older ingest) by its name only,
    so a server's directories are not shown to its callers."""
    return Path(source).name if source.startswith("/") or Path(source).is_absolute() else source


def staged_collection_name(corpus: str, version: int) -> str:
    return f"{STAGED_PREFIX}{corpus}_v{version}"


def staged_corpus(name: str) -> tuple[str, int] | None:
    """(corpus, version) of a staged collection's name; None for any other name."""
    if not name.startswith(STAGED_PREFIX):
        return None
    corpus, sep, version = name[len(STAGED_PREFIX) :].rpartition("_v")
    if not sep or not version.isdigit() or not valid_corpus_name(corpus):
        return None
    return corpus, int(version)


def doc_pk(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def view_pk(key: str, view: int) -> str:
    """The primary key of the row of a doc's ``view``-th view (1-based)."""
    return f"{doc_pk(key)}:{view}"


def fit_bytes(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def fit_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata small enough for a Milvus JSON field: big function schemas lose detail first."""
    plain: dict[str, Any] = json.loads(json.dumps(dict(metadata), default=str, ensure_ascii=False))
    if len(json.dumps(plain, ensure_ascii=False).encode()) <= MAX_METADATA_BYTES:
        return plain
    function = plain.get("function")
    if isinstance(function, dict) and isinstance(function.get("parameters"), dict):
        params = function["parameters"]
        props = params.get("properties") or {}
        params["properties"] = {
            name: {k: v for k, v in (schema or {}).items() if k in ("type", "enum", "default")}
            for name, schema in props.items()
        }
        plain["truncated"] = True
        if len(json.dumps(plain, ensure_ascii=False).encode()) <= MAX_METADATA_BYTES:
            return plain
    plain.pop("function", None)
    plain["truncated"] = True
    if len(json.dumps(plain, ensure_ascii=False).encode()) <= MAX_METADATA_BYTES:
        return plain
    return {"truncated": True, "kind": plain.get("kind")}


def redact_uri(uri: str) -> str:
    """The URI without user:password, for messages."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def is_local_uri(uri: str) -> bool:
    return "://" not in uri


@dataclass(frozen=True)
class CorpusSettings:
    """What a corpus was built with; stored as collection properties."""

    format: CorpusFormat
    source: str
    embedding_model: str
    embedding_dim: int


class _LiteServers:
    """How many open stores use each Milvus Lite directory of this process.

    pymilvus starts Milvus Lite's embedded server (threads, a port, the directory's lock) the
    first time a client opens a ``.db`` path and keeps it until the process exits; stores of one
    directory share it. The last store to close stops it, so that a start-up that fails half-way,
    or a test, leaves no server, thread or lock behind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, path: str) -> str:
        key = str(Path(path).absolute())
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1
        return key

    def release(self, key: str) -> None:
        with self._lock:
            left = self._users.get(key, 0) - 1
            if left > 0:
                self._users[key] = left
                return
            self._users.pop(key, None)
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # no Lite, so no embedded server to stop
            return
        server_manager_instance.release_server(key)


_LITE_SERVERS = _LiteServers()


class MilvusStore:
    """Blocking access to the apihelper collections of one Milvus (Lite file or server).

    ``uri``: a local path ending in ``.db`` (Milvus Lite; parent directories are created) or
    ``http(s)://host:19530``. ``token``: "user:password" or an API key for a server.
    """

    def __init__(
        self, uri: str, token: str | None = None, *, timeout_s: float = 10.0, doc_cache_size: int = DOC_CACHE_SIZE
    ) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise MissingDependencyError("pymilvus", "the Milvus retriever", "pip install pymilvus") from exc
        self._uri = uri
        self._timeout = timeout_s
        self._loaded: set[str] = set()
        self._schema: dict[str, str] = {}  # corpus -> schema version, read when it is loaded
        self._views: dict[str, bool] = {}  # corpus -> whether it holds view rows, read when it is loaded
        self._lock = threading.Lock()
        # (corpus, key) -> (content_hash, doc), least recently used first
        self._doc_cache: OrderedDict[tuple[str, str], tuple[str, ApiDoc]] = OrderedDict()
        self._doc_cache_size = doc_cache_size
        self._doc_cache_lock = threading.Lock()
        self._lite_path: str | None = None
        if is_local_uri(uri):
            path = Path(uri).expanduser()
            if path.suffix != ".db":
                raise ConfigurationError(
                    f"Milvus Lite URI {uri!r} must be a path ending in '.db' (or use http://host:19530)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            uri = str(path)
            self._lite_path = _LITE_SERVERS.acquire(uri)
        self._closed = False
        try:
            self._client: Any = MilvusClient(uri=uri, token=token or "", timeout=timeout_s)
        except Exception as exc:  # connection refused, DataDirLockedError, bad URI: all "unavailable"
            self._release_lite()
            raise RetrieverUnavailableError(
                f"cannot open Milvus at {redact_uri(self._uri)}: {type(exc).__name__}: {_reason(exc)}"
            ) from exc

    @property
    def uri(self) -> str:
        return redact_uri(self._uri)

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except (RetrieverUnavailableError, ConfigurationError):
            raise
        except MilvusException as exc:
            raise RetrieverUnavailableError(f"Milvus {action} failed: {_reason(exc)}") from exc
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise RetrieverUnavailableError(f"Milvus {action} failed: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # grpc errors surface as grpc.RpcError subclasses; anything else is a bug, re-raised.
            if type(exc).__module__.startswith(("grpc", "pymilvus", "milvus_lite")):
                raise RetrieverUnavailableError(f"Milvus {action} failed: {type(exc).__name__}: {exc}") from exc
            raise

    # ---------------------------------------------------------------- health and corpora

    def ping(self) -> None:
        """A cheap round trip (list collections); raises RetrieverUnavailableError."""
        with self._guard("health check"):
            self._client.list_collections(timeout=self._timeout)

    def corpus_names(self) -> list[str]:
        """Names of the corpora present (collections named apihelper_<valid name>)."""
        with self._guard("list collections"):
            names = [*self._client.list_collections(timeout=self._timeout), *self._aliases()]
        return sorted(
            {
                n[len(COLLECTION_PREFIX) :]
                for n in names
                if n.startswith(COLLECTION_PREFIX) and valid_corpus_name(n[len(COLLECTION_PREFIX) :])
            }
        )

    def _aliases(self, collection: str | None = None) -> list[str]:
        """Every alias (of ``collection`` when given). Call inside ``_guard``."""
        if collection is None:
            listed = self._client.list_aliases(timeout=self._timeout)
        else:
            listed = self._client.list_aliases(collection, timeout=self._timeout)
        return [str(a) for a in (listed.get("aliases") or [])]

    def serving_collection(self, corpus: str) -> str | None:
        """The collection that holds what ``corpus`` serves: the alias' target, the legacy
        collection of that name, or None when the corpus does not exist."""
        served = collection_name(corpus)
        with self._guard("describe alias"):
            if served in self._aliases():
                return str(self._client.describe_alias(served, timeout=self._timeout)["collection_name"])
            if self._client.has_collection(served, timeout=self._timeout):
                return served
        return None

    def has_corpus(self, corpus: str) -> bool:
        if not valid_corpus_name(corpus):
            return False
        with self._guard("has_collection"):
            return bool(self._client.has_collection(collection_name(corpus), timeout=self._timeout))

    def _properties(self, corpus: str) -> dict[str, str]:
        with self._guard("describe collection"):
            described = self._client.describe_collection(collection_name(corpus), timeout=self._timeout)
        raw = described.get("properties") or {}
        return {str(k): str(v) for k, v in raw.items()}

    def corpus_info(self, corpus: str) -> CorpusInfo | None:
        """The stored info of ``corpus``; None when the collection is not an apihelper corpus."""
        props = self._properties(corpus)
        try:
            fmt = CorpusFormat(props[_P_FORMAT])
        except (KeyError, ValueError):
            return None
        last = props.get(_P_LAST) or ""
        try:
            last_ingest = datetime.fromisoformat(last) if last else None
        except ValueError:
            last_ingest = None
        try:
            count = int(props.get(_P_COUNT, "0"))
        except ValueError:
            count = 0
        return CorpusInfo(
            name=corpus,
            format=fmt,
            doc_count=count,
            source=shown_source(props.get(_P_SOURCE, "")),
            embedding_model=props.get(_P_MODEL, ""),
            last_ingest=last_ingest,
        )

    def schema_version(self, corpus: str) -> str:
        """The schema version the collection of ``corpus`` was created with ("1" when unset)."""
        return self._properties(corpus).get(_P_SCHEMA) or "1"

    def embedding_dim(self, corpus: str) -> int | None:
        try:
            return int(self._properties(corpus).get(_P_DIM, ""))
        except ValueError:
            return None

    def list_corpora(self) -> list[CorpusInfo]:
        infos = []
        for name in self.corpus_names():
            info = self.corpus_info(name)
            if info is not None:
                infos.append(info)
        return infos

    # ---------------------------------------------------------------- writing (ingest)

    def create_corpus(self, corpus: str, settings: CorpusSettings) -> None:
        """Create ``corpus`` (which must not exist), empty, with its indexes and info: a first
        version, served at once (ingest stages versions instead, see ``stage_corpus``)."""
        check_corpus_name(corpus)
        staged = self.stage_corpus(corpus, settings)
        self.publish(corpus, staged)

    def stage_corpus(self, corpus: str, settings: CorpusSettings) -> str:
        """A new, empty collection for the next version of ``corpus``, not served yet; its name.
        Staged collections of ``corpus`` that a crashed run left are dropped first."""
        check_corpus_name(corpus)
        serving = self.serving_collection(corpus)
        with self._guard("list collections"):
            names = self._client.list_collections(timeout=self._timeout)
        versions = [0]
        for name in names:
            staged = staged_corpus(name)
            if staged is None or staged[0] != corpus:
                continue
            versions.append(staged[1])
            if name != serving:
                log.warning("dropping %s, left by an ingest of corpus %s that did not finish", name, corpus)
                with self._guard("drop collection"):
                    self._client.drop_collection(name, timeout=self._timeout)
        name = staged_collection_name(corpus, max(versions) + 1)
        self._create_collection(name, settings)
        return name

    def _create_collection(self, name: str, settings: CorpusSettings) -> None:
        from pymilvus import DataType, Function, FunctionType

        with self._guard("create collection"):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("key", DataType.VARCHAR, max_length=MAX_KEY_BYTES)
            schema.add_field("view", DataType.INT16)
            schema.add_field("title", DataType.VARCHAR, max_length=MAX_TITLE_BYTES)
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field("index_text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field(
                "keywords",
                DataType.VARCHAR,
                max_length=MAX_TEXT_BYTES,
                enable_analyzer=True,
                # 'standard' is the only tokenizer Milvus Lite has; the text is already normalised
                # (keyword_terms), so a server's tokenizer gives the same terms.
                analyzer_params={"tokenizer": "standard", "filter": ["lowercase"]},
            )
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=settings.embedding_dim)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
            schema.add_function(
                Function(
                    name="keywords_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["keywords"],
                    output_field_names=["sparse"],
                )
            )
            index_params = self._client.prepare_index_params()
            index_params.add_index(
                "dense", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
            )
            index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            self._client.create_collection(
                name,
                schema=schema,
                index_params=index_params,
                properties={
                    _P_SCHEMA: SCHEMA_VERSION,
                    _P_FORMAT: settings.format.value,
                    _P_SOURCE: settings.source,
                    _P_MODEL: settings.embedding_model,
                    _P_DIM: str(settings.embedding_dim),
                    _P_COUNT: "0",
                    _P_LAST: "",
                    _P_VIEWS: "0",
                },
                timeout=self._timeout,
            )

    def publish(self, corpus: str, staged: str) -> None:
        """Serve ``staged`` (complete) as ``corpus`` in one step, then drop the version it replaces."""
        served = collection_name(corpus)
        old = self.serving_collection(corpus)
        with self._guard("load collection"):
            self._client.load_collection(staged, timeout=max(self._timeout, 60.0))
        with self._guard("switch alias"):
            if old is not None and old != served:
                self._client.alter_alias(staged, served, timeout=self._timeout)
            else:
                if old == served:  # a corpus made before versions: its collection has the name
                    self._client.drop_collection(served, timeout=self._timeout)
                self._client.create_alias(staged, served, timeout=self._timeout)
        self._loaded.discard(corpus)
        self._schema.pop(corpus, None)
        self._views.pop(corpus, None)
        if old is not None and old != served:
            try:  # served already: a failure here only leaves the old version for the next ingest
                with self._guard("drop collection"):
                    self._client.drop_collection(old, timeout=self._timeout)
            except RetrieverUnavailableError as exc:
                log.warning("could not drop %s, the version corpus %s served before: %s", old, corpus, exc)

    def abandon(self, staged: str) -> None:
        """Drop a staged collection that will not be served (its run failed). Best effort: what
        is left is dropped by the next ingest of the corpus."""
        if staged_corpus(staged) is None:
            raise ValueError(f"{staged!r} is not a staged collection")
        try:
            with self._guard("drop collection"):
                self._client.drop_collection(staged, timeout=self._timeout)
        except RetrieverUnavailableError as exc:
            log.warning("could not drop %s after a failed ingest (the next ingest will): %s", staged, exc)

    def drop_corpus(self, corpus: str) -> None:
        serving = self.serving_collection(corpus)
        if serving is None:
            return
        with self._guard("drop collection"):
            if serving != collection_name(corpus):
                self._client.drop_alias(collection_name(corpus), timeout=self._timeout)
            self._client.drop_collection(serving, timeout=self._timeout)
        self._loaded.discard(corpus)

    def update_corpus_info(
        self,
        corpus: str,
        *,
        settings: CorpusSettings,
        doc_count: int,
        last_ingest: datetime | None,
        staged: str | None = None,
    ) -> None:
        """Set the info of ``corpus`` (of its staged version ``staged``, when given)."""
        props = {
            _P_FORMAT: settings.format.value,
            _P_SOURCE: settings.source,
            _P_MODEL: settings.embedding_model,
            _P_DIM: str(settings.embedding_dim),
            _P_COUNT: str(doc_count),
        }
        if last_ingest is not None:
            props[_P_LAST] = last_ingest.astimezone(UTC).isoformat()
        with self._guard("alter collection properties"):
            self._client.alter_collection_properties(
                staged or collection_name(corpus), properties=props, timeout=self._timeout
            )

    def ensure_loaded(self, corpus: str, *, wait_s: float | None = None) -> None:
        """Load the collection into memory if needed (reopened collections start released).

        ``wait_s``: how long to wait while another thread loads one (None: as long as it takes);
        past it, RetrieverUnavailableError.
        """
        if corpus in self._loaded:
            return
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            raise RetrieverUnavailableError(
                f"Milvus is loading collections (corpus {corpus!r} among them); retry shortly"
            )
        try:
            if corpus in self._loaded:
                return
            name = collection_name(corpus)
            with self._guard("load collection"):
                state = self._client.get_load_state(name, timeout=self._timeout)
                if "Loaded" not in str(state.get("state", "")):
                    self._client.load_collection(name, timeout=max(self._timeout, 60.0))
            props = self._properties(corpus)
            self._schema[corpus] = props.get(_P_SCHEMA) or "1"
            self._views[corpus] = props.get(_P_VIEWS) == "1"
            self._loaded.add(corpus)
        finally:
            self._lock.release()

    def reload_released(self) -> None:
        """Reload the collections this store was using that Milvus no longer holds loaded (it
        restarted, or another process rebuilt one), so that a passing health check means the
        searches will run. Corpora dropped meanwhile are forgotten, not errors."""
        for corpus in sorted(self._loaded):
            name = collection_name(corpus)
            with self._guard("load state"):
                if not self._client.has_collection(name, timeout=self._timeout):
                    self._loaded.discard(corpus)
                    continue
                state = self._client.get_load_state(name, timeout=self._timeout)
            if "Loaded" not in str(state.get("state", "")):
                self._loaded.discard(corpus)
                self.ensure_loaded(corpus)

    def content_hashes(self, corpus: str) -> dict[str, str]:
        """Every stored doc's key -> content_hash (strongly consistent read)."""
        self.ensure_loaded(corpus)
        with self._guard("query"):
            rows = self._rows(corpus, ["key", "content_hash"], batch_size=READ_BATCH, docs_only=True)
            return {str(row["key"]): str(row["content_hash"]) for row in rows}

    def _rows(
        self, corpus: str, fields: list[str], *, batch_size: int, limit: int | None = None, docs_only: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every row of ``corpus`` (``fields`` only; with ``docs_only`` the docs' own rows, not
        their views'), paged with a strongly consistent query iterator: a plain query is capped
        at 16384 rows by Milvus. Call inside ``_guard``."""
        iterator = self._client.query_iterator(
            collection_name(corpus),
            batch_size=batch_size,
            limit=-1 if limit is None else limit,
            filter="view == 0" if docs_only and self._has_views(corpus) else "",
            output_fields=fields,
            timeout=self._timeout,
            consistency_level="Strong",
        )
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    return
                yield from batch
        finally:
            iterator.close()

    def corpus_docs(self, corpus: str, *, limit: int | None = None, batch_size: int = READ_BATCH) -> list[ApiDoc]:
        """Every doc of ``corpus`` as ingested (no vectors), in no particular order; at most
        ``limit`` when given (a caller bounding memory asks for one more than it accepts).

        Read in pages of ``batch_size`` with a query iterator (a plain query is capped at 16384
        rows by Milvus), strongly consistent: a caller caching the docs under the corpus'
        last_ingest must not get a view older than that ingest. A collection found released is
        loaded and the whole read retried, as searches are.
        """
        if limit is not None and limit <= 0:
            return []

        def read() -> list[ApiDoc]:
            with self._guard("read corpus"):
                rows = self._rows(corpus, OUTPUT_FIELDS, batch_size=batch_size, limit=limit, docs_only=True)
                return [_doc_of(row) for row in rows]

        return self._loaded_retry(corpus, read)

    def upsert_docs(
        self,
        corpus: str,
        docs: Sequence[ApiDoc],
        vectors: Sequence[Sequence[float]],
        *,
        staged: str | None = None,
        view_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        """Insert or replace ``docs`` (matched by key) with their dense vectors, in ``corpus`` or
        in its staged version ``staged``; ``view_vectors[i]`` holds the vectors of ``docs[i]``'s
        views (at most ``MAX_VIEWS`` are stored), one row each. Replacing a doc in place (no
        ``staged``) replaces its views' rows that it still has; ingest writes versions instead."""
        if len(docs) != len(vectors) or (view_vectors is not None and len(view_vectors) != len(docs)):
            raise ValueError("docs and vectors differ in length")
        if not docs:
            return
        rows: list[dict[str, Any]] = []
        for i, (doc, vector) in enumerate(zip(docs, vectors, strict=True)):
            row = {
                "pk": doc_pk(doc.key),
                "key": doc.key,
                "view": 0,
                "title": fit_bytes(doc.title, MAX_TITLE_BYTES),
                "text": fit_bytes(doc.text, MAX_TEXT_BYTES),
                "index_text": fit_bytes(doc.index_text, MAX_TEXT_BYTES),
                "keywords": fit_bytes(keyword_terms(doc.index_text), MAX_TEXT_BYTES),
                "dense": [float(v) for v in vector],
                "metadata": fit_metadata(doc.metadata),
                "content_hash": doc.content_hash,
            }
            rows.append(row)
            for n, view_vector in enumerate((view_vectors[i] if view_vectors is not None else [])[:MAX_VIEWS], 1):
                # A view's row: the doc's fields (a hit shows the doc), its own vector, no keywords.
                rows.append(
                    {
                        **row,
                        "pk": view_pk(doc.key, n),
                        "view": n,
                        "keywords": "",
                        "dense": [float(v) for v in view_vector],
                    }
                )
        self._insert_rows(staged or collection_name(corpus), rows, upsert=staged is None)
        if len(rows) > len(docs):
            self._mark_views(staged or collection_name(corpus))

    def _insert_rows(self, collection: str, rows: list[dict[str, Any]], *, upsert: bool) -> None:
        """The one place rows are written (an I/O boundary tests fail on purpose)."""
        with self._guard("upsert" if upsert else "insert"):
            if upsert:
                self._client.upsert(collection, rows, timeout=max(self._timeout, 60.0))
            else:
                self._client.insert(collection, rows, timeout=max(self._timeout, 60.0))

    def copy_docs(self, corpus: str, staged: str, keys: set[str], *, batch_size: int = READ_BATCH) -> int:
        """Copy the stored rows of ``keys`` (their views' rows too; vectors included: nothing is
        embedded again) from what ``corpus`` serves into its staged version; returns how many
        docs were copied."""
        copied: set[str] = set()
        views = False
        self.ensure_loaded(corpus)
        with self._guard("read corpus"):
            batch: list[dict[str, Any]] = []
            for row in self._rows(corpus, COPIED_FIELDS, batch_size=batch_size):
                if str(row.get("key")) not in keys:
                    continue
                batch.append({f: row[f] for f in COPIED_FIELDS})
                copied.add(str(row["key"]))
                views = views or int(row.get("view") or 0) > 0
                if len(batch) >= batch_size:
                    self._insert_rows(staged, batch, upsert=False)
                    batch = []
            if batch:
                self._insert_rows(staged, batch, upsert=False)
        if views:
            self._mark_views(staged)
        return len(copied)

    def delete_keys(self, corpus: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        ids = [pk for k in keys for pk in (doc_pk(k), *(view_pk(k, n) for n in range(1, MAX_VIEWS + 1)))]
        with self._guard("delete"):
            self._client.delete(collection_name(corpus), ids=ids, timeout=self._timeout)

    def flush(self, corpus: str, *, staged: str | None = None) -> None:
        """Seal written data (a server otherwise does it in the background)."""
        with self._guard("flush"):
            self._client.flush(staged or collection_name(corpus), timeout=max(self._timeout, 60.0))

    # ---------------------------------------------------------------- search

    def search(
        self,
        corpus: str,
        *,
        mode: RetrievalMode,
        query_text: str,
        query_vector: Sequence[float] | None,
        top_k: int,
    ) -> list[RetrievedDoc]:
        """Best ``top_k`` docs of one corpus by one method (dense or keyword), best first; scores
        are higher-is-better: cosine similarity (dense), BM25 (keyword; absolute value, Lite
        reports it negated). Hybrid retrieval pools both methods' candidates of every corpus
        (:func:`hybrid_candidates` of them each) and fuses them (``retriever.fusion``), so it is not a mode here.
        """
        if mode is RetrievalMode.NONE or top_k <= 0:
            return []
        if mode is RetrievalMode.HYBRID:
            raise ValueError("hybrid search fuses dense and keyword candidates of every corpus: see MilvusRetriever")
        if mode is RetrievalMode.DENSE:
            if query_vector is None:
                raise ValueError("dense search needs a query vector")
            return self._loaded_retry(corpus, lambda: self._dense(corpus, query_vector, top_k))
        return self._loaded_retry(corpus, lambda: self._keyword(corpus, query_text, top_k))

    def _loaded_retry(self, corpus: str, search: Callable[[], _T]) -> _T:
        """Run ``search`` on a loaded collection; load once more and retry if it was released
        (someone released it, Lite reopened, or another process rebuilt it)."""
        self.ensure_loaded(corpus, wait_s=LOAD_WAIT_SECONDS)
        try:
            return search()
        except RetrieverUnavailableError as exc:
            reason = str(exc).lower()
            if not any(word in reason for word in ("load", "released", "not found", "not exist")):
                raise
            self._loaded.discard(corpus)
            self.ensure_loaded(corpus, wait_s=LOAD_WAIT_SECONDS)
            return search()

    def _has_views(self, corpus: str) -> bool:
        """Whether the collection of ``corpus`` holds view rows (read when it was loaded; a
        collection without views is searched plainly, its rows being its docs)."""
        if corpus not in self._views:
            props = self._properties(corpus)
            self._views[corpus] = (props.get(_P_SCHEMA) or "1") not in ("1", "2") and props.get(_P_VIEWS) == "1"
        return self._views[corpus]

    def _mark_views(self, collection: str) -> None:
        """Record that ``collection`` holds view rows (its dense searches group by key)."""
        with self._guard("alter collection properties"):
            self._client.alter_collection_properties(collection, properties={_P_VIEWS: "1"}, timeout=self._timeout)

    def _dense(self, corpus: str, vector: Sequence[float], limit: int) -> list[RetrievedDoc]:
        if not self._has_views(corpus):
            return self._hits(corpus, self._dense_rows(corpus, vector, limit, group=False), negate=False)
        # Views: one hit per doc, its best row. The best rows of the first ``limit * OVERFETCH``
        # rows, collapsed by key, are that: a key none of them carries scores below all of them.
        # Only when they hold fewer than ``limit`` keys (and the collection more rows) is Milvus'
        # grouping search asked, which costs 2-3 times a plain search of those rows.
        fetched = limit * OVERFETCH
        result = self._dense_rows(corpus, vector, fetched, group=False)
        rows = list(result[0]) if result else []
        best: dict[str, Any] = {}  # key -> its first row: rows come best first
        for row in rows:
            best.setdefault(str((row.get("entity") or {}).get("key", "")), row)
        if len(best) < limit and len(rows) == fetched:
            return self._hits(corpus, self._dense_rows(corpus, vector, limit, group=True), negate=False)
        return self._hits(corpus, [list(best.values())[:limit]], negate=False)

    def _dense_rows(self, corpus: str, vector: Sequence[float], limit: int, *, group: bool) -> Any:
        params = {"metric_type": "COSINE", "params": {"ef": max(64, limit * 2)}}
        grouping = {"group_by_field": "key"} if group else {}
        with self._guard("dense search"):
            return self._client.search(
                collection_name(corpus),
                data=[list(vector)],
                anns_field="dense",
                limit=limit,
                search_params=params,
                output_fields=HIT_FIELDS,
                timeout=self._timeout,
                **grouping,
            )

    def _keyword(self, corpus: str, query_text: str, limit: int) -> list[RetrievedDoc]:
        # Schema 2 stores keyword_terms(index_text): the query gets the same treatment.
        terms = keyword_terms(query_text) if self._schema.get(corpus, SCHEMA_VERSION) != "1" else query_text
        if not terms.strip():
            return []  # only stop words: BM25 has nothing to match
        # drop_ratio_search must be 0 on Milvus Lite (and 0 is the exact search on a server).
        params = {"metric_type": "BM25", "params": {"drop_ratio_search": 0.0}}
        with self._guard("keyword search"):
            result = self._client.search(
                collection_name(corpus),
                data=[terms],
                anns_field="sparse",
                limit=limit,
                search_params=params,
                output_fields=HIT_FIELDS,
                timeout=self._timeout,
            )
        return self._hits(corpus, result, negate=True)

    def _hits(self, corpus: str, result: Any, *, negate: bool) -> list[RetrievedDoc]:
        hits = list(result[0]) if result else []
        found: list[tuple[str, str, float]] = []
        for hit in hits:
            entity = hit.get("entity") or {}
            distance = float(hit.get("distance", 0.0))
            # BM25 distances are negative on Lite (positive on a server): abs() serves both.
            found.append((str(entity.get("key", "")), str(entity.get("content_hash", "")), distance))
        docs = self._docs(corpus, [(key, digest) for key, digest, _ in found])
        out = [
            RetrievedDoc(doc=docs[key], corpus=corpus, score=abs(distance) if negate else distance)
            for key, _, distance in found
            if key in docs  # gone between the search and the read (a re-ingest deleted it)
        ]
        out.sort(key=lambda r: r.score, reverse=True)
        return out

    def _docs(self, corpus: str, wanted: Sequence[tuple[str, str]]) -> dict[str, ApiDoc]:
        """The docs of (key, content_hash) pairs: from the cache where the hash matches, the rest
        read by primary key in one round trip (and cached)."""
        out: dict[str, ApiDoc] = {}
        missing: dict[str, str] = {}
        with self._doc_cache_lock:
            for key, digest in wanted:
                cached = self._doc_cache.get((corpus, key))
                if cached is not None and cached[0] == digest:
                    self._doc_cache.move_to_end((corpus, key))
                    out[key] = cached[1]
                else:
                    missing[key] = digest
        if not missing:
            return out
        with self._guard("read docs"):
            rows = self._client.get(
                collection_name(corpus),
                ids=[doc_pk(key) for key in missing],
                output_fields=[*OUTPUT_FIELDS, "content_hash"],
                timeout=self._timeout,
            )
        with self._doc_cache_lock:
            for row in rows or []:
                doc = _doc_of(row)
                out[doc.key] = doc
                if self._doc_cache_size > 0:
                    self._doc_cache[(corpus, doc.key)] = (str(row.get("content_hash", "")), doc)
                    self._doc_cache.move_to_end((corpus, doc.key))
            while len(self._doc_cache) > self._doc_cache_size:
                self._doc_cache.popitem(last=False)
        return out

    def close(self) -> None:
        """Close the connection; for Milvus Lite, the last store of a directory also stops the
        embedded server, which frees its threads and the directory's lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except Exception as exc:  # closing is best effort; the process may be exiting
            log.debug("closing Milvus client failed: %s", exc)
        self._release_lite()

    def _release_lite(self) -> None:
        if self._lite_path is not None:
            _LITE_SERVERS.release(self._lite_path)
            self._lite_path = None


def _doc_of(entity: Mapping[str, Any]) -> ApiDoc:
    metadata = entity.get("metadata")
    return ApiDoc(
        key=str(entity.get("key", "")),
        title=str(entity.get("title", "")),
        text=str(entity.get("text", "")),
        index_text=str(entity.get("index_text", "")),
        metadata=metadata if isinstance(metadata, dict) else {},
    )


def hybrid_candidates(top_k: int, candidates: int = HYBRID_CANDIDATES) -> int:
    """How many candidates each side of a hybrid search fetches for ``top_k`` results."""
    return min(max(top_k, candidates), 16384)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return str(message) if message else str(exc)


def now_utc() -> datetime:
    return datetime.now(UTC)
