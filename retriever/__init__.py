"""Retrieval of API documentation: loaders, ingest, and search over Milvus.

Modules (heavy libraries are imported lazily, inside functions and constructors):

- ``retriever.types``: plain domain types and the ``Retriever`` protocol.
- ``retriever.loaders``: ``load_corpus(path, fmt=None, *, include=None)`` and ``detect_format``;
  one module per format (openapi, python_pkg, apibench, jsonl).
- ``retriever.embedding``: ``Embedder`` (llama-index HuggingFaceEmbedding over the bundled MiniLM)
  and the ``TextEmbedder`` protocol.
- ``retriever.milvus_store``: ``MilvusStore``, the only module that imports pymilvus.
- ``retriever.ingest``: ``ingest_corpus`` (idempotent) and ``format_report``.
- ``retriever.service``: ``MilvusRetriever`` (async, implements ``Retriever``) and ``open_retriever``.
- ``retriever.samples``: the project's own demo corpus (``sample_corpus_path()``).
"""
