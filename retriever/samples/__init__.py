"""The project's own sample corpus, shipped as package data for the demo and tests.

``demo_cloud_openapi.yaml`` is an original OpenAPI 3.0 spec of "Nimbus", a fictional GPU cloud
(compute sessions, storage folders, images, users and keypairs; 20 operations).
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_CORPUS_NAME = "demo_cloud"


def sample_corpus_path() -> Path:
    """Path of the demo OpenAPI spec (ingest it as corpus ``demo_cloud``)."""
    return Path(__file__).resolve().parent / "demo_cloud_openapi.yaml"
