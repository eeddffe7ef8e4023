"""apihelper: retrieval-augmented API-call generation, streamed over gRPC.

The package root is the floor every layer stands on: ``apihelper.errors`` (the one error tree),
``apihelper.grpc_status`` (that tree on gRPC, both ways) and ``apihelper.v1`` (the generated
stubs). Above it, each in its own folder of the repository: ``apihelper.retriever`` (docs,
loaders, Milvus search), ``apihelper.service`` (the gRPC service and its engines),
``apihelper.build`` (``apihelper-build``: offline steps), ``apihelper.client`` (the sample client)
and ``apihelper.bench`` (benchmarks). Dependencies point down; ``lint-imports`` checks it.
"""
