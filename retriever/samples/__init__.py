"""The project's own sample corpus, shipped as package data for the demo and tests.

``demo_cloud_openapi.yaml`` is an original OpenAPI 3.0 spec of "Nimbus", a fictional GPU cloud
(compute sessions, storage folders, images, users and keypairs; 20 operations).
"""

from __future__ import annotations

from pathlib import Path


def sample_corpus_path() -> Path:
    """Path of the demo OpenAPI spec (``make demo`` ingests it as corpus ``rest``, the corpus the
    seed's ``/rest_api`` route reads)."""
    return Path(__file__).resolve().parent / "demo_cloud_openapi.yaml"
