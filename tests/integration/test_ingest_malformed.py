"""Malformed corpora: every bad file gets a clear error naming it, the rest is ingested, and the
exit status says the ingest was partial."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BUILD = Path(sys.executable).parent / "apihelper-build"


def _ingest(db: Path, *corpora: str) -> subprocess.CompletedProcess[str]:
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(db)]
    for c in corpora:
        args += ["--corpus", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_bad_files_are_named_and_the_rest_ingested(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A package."""\n')
    (pkg / "good.py").write_text(
        'def create_session(image: str, name: str = "") -> dict:\n    """Create a session."""\n'
    )
    (pkg / "broken.py").write_text("def oops(:\n")
    (pkg / "binary.py").write_bytes(b"\x00\x01\x02 not python \xff")
    with (pkg / "huge.py").open("w") as f:  # 50 MB
        line = "x = 1  # " + "y" * 90 + "\n"
        for _ in range(50 * 1024 * 1024 // len(line)):
            f.write(line)
    spec = tmp_path / "api.json"
    spec.write_text(
        json.dumps(
            {
                "openapi": "3.0.0",
                "info": {"title": "t", "version": "1"},
                "paths": {
                    "/a": {"get": {"summary": "List a", "responses": {"200": {"description": "ok"}}}},
                    "/b": {
                        "post": {
                            "summary": "Make b",
                            "requestBody": {
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Missing"}}}
                            },
                        }
                    },
                },
            }
        )
    )
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")

    result = _ingest(tmp_path / "milvus.db", f"py={pkg}:python", f"rest={spec}", f"broken={bad_json}")
    assert result.returncode == 3, result.stdout + result.stderr  # partial
    for name in ("broken.py", "binary.py", "huge.py", "bad.json"):
        assert name in result.stderr, name
    assert "Missing" in result.stderr  # the broken $ref, named
    assert re.search(r"corpus 'py': [1-9]\d* added", result.stdout), result.stdout  # good.py got in
    assert "corpus 'rest': 2 added" in result.stdout


def test_nothing_ingestable_exits_2(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    result = _ingest(tmp_path / "milvus.db", f"broken={bad_json}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad.json" in result.stderr
