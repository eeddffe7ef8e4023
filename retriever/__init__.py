"""Retrieval of API documentation: loaders, ingest, and search over Milvus.

Modules (heavy libraries are imported lazily, inside functions and constructors):

- ``retriever.types``: plain domain types and the ``Retriever`` protocol.
- ``retriever.loaders``: ``load_corpus(path, fmt=None, *, include=None, limits=IngestLimits())`` and ``detect_format``
  (every file read as hostile input within ``retriever.limits.IngestLimits``);
  one module per format (openapi, python_pkg, apibench, jsonl, function_schema).
- ``retriever.embedding``: ``Embedder`` (llama-index HuggingFaceEmbedding over the bundled MiniLM)
  and the ``TextEmbedder`` protocol.
- ``retriever.milvus_store``: ``MilvusStore``, the only module that imports pymilvus.
- ``retriever.textnorm``: ``keyword_terms``, the BM25 normalisation (split, stop words, stemming)
  applied to stored keywords and to queries alike.
- ``retriever.fusion``: ``fuse``/``fuse_hits``, the client-side hybrid fusion of dense and BM25
  candidates; ``retriever.ranking``: the rules applied after it (command-line prior, variants last).
- ``retriever.adapter``: ``QueryAdapter`` (a trained linear map of query vectors, bundled in
  ``retriever/models/``) and ``AdaptedEmbedder``; ``query_embedder`` picks bundled / none / a file.
- ``retriever.evaluate``: question files, top-1/top-5/MRR@10/latency through a Retriever
  (``apihelper-build eval-retrieval``, ``bench/retrieval/run.py``).
- ``retriever.ingest``: ``ingest_corpus`` (idempotent) and ``format_report``.
- ``retriever.milvus_retriever``: ``MilvusRetriever`` (async, implements ``Retriever``) and
  ``open_retriever``.
- ``retriever.samples``: the project's own demo corpus (``sample_corpus_path()``).
"""
