"""Retrieval of API documentation: loaders, ingest, and search over Milvus."""
