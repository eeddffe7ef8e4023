"""Offline steps (``apihelper-build``): make models and engines, ingest docs into Milvus.

They share only on-disk artifacts with the service: model/engine directories with their
manifest, and Milvus collections.
"""
