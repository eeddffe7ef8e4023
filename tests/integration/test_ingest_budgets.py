"""Issue 25 row 4: budgets per file, not only per operation. The real ``apihelper-build ingest``
(subprocess, Milvus Lite, the MiniLM embedder) under memory and time caps:

- a spec of 1,000 operations, each under the per-operation ``$ref`` and node caps, whose schemas
  fan out (before: killed at 2-4 GiB) stops at ``--max-file-schema-nodes`` with the limit named,
  keeping the operations built before it, under 1.5 GiB peak RSS and within a load-scaled 120 s;
- a YAML file whose few aliases copy one 1 MB value into every operation (under the alias node
  cap; before: 2.49 GiB, 502 s) is refused at ``--max-yaml-alias-bytes``, under 1 GiB.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from apihelper.retriever.limits import DEFAULT_LIMITS
from tests.integration.test_ingest_hostile import BUILD, GOOD_SPEC, MIB, run_ingest
from tests.support import budget


def fanout_operations(operations: int, width: int, depth: int) -> dict[str, object]:
    """``operations`` operations whose request bodies all ``$ref`` one schema that fans out
    ``width`` wide and ``depth`` deep: each operation alone stays under the per-operation caps."""
    schemas: dict[str, object] = {}
    for level in range(depth):
        target = {"$ref": f"#/components/schemas/L{level + 1}"} if level + 1 < depth else {"type": "string"}
        schemas[f"L{level}"] = {"type": "object", "properties": {f"p{i}": target for i in range(width)}}
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/L0"}}}}
    paths = {
        f"/things{i}": {
            "post": {"summary": f"Make thing {i}", "requestBody": body, "responses": {"200": {"description": "ok"}}}
        }
        for i in range(operations)
    }
    return {
        "openapi": "3.0.0",
        "info": {"title": "fan", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def aliased_default(operations: int, value_bytes: int) -> str:
    """A YAML spec whose every operation's parameter default is an alias of one big string."""
    lines = ["openapi: 3.0.0", "info: {title: big, version: '1'}", f"x-big: &big {'b' * value_bytes}", "paths:"]
    for i in range(operations):
        lines += [
            f"  /big{i}:",
            "    get:",
            f"      summary: Get big thing {i}",
            "      parameters:",
            "        - {name: q, in: query, schema: {type: string, default: *big}}",
            "      responses: {'200': {description: ok}}",
        ]
    return "\n".join(lines) + "\n"


def _args(db: Path, corpora: dict[str, Path]) -> list[str]:
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(db)]
    for name, path in corpora.items():
        args += ["--corpus", f"{name}={path}"]
    return args


def test_a_thousand_operations_under_the_per_operation_caps_stop_at_the_file_budget(tmp_path: Path) -> None:
    width, depth = 26, 3  # 18,279 nodes (~0.5 MB of metadata) per operation: under 20,000
    assert sum(width**level for level in range(depth + 1)) < DEFAULT_LIMITS.max_schema_nodes
    spec = tmp_path / "fan.json"
    spec.write_text(json.dumps(fanout_operations(1000, width, depth)))
    assert spec.stat().st_size < 256_000
    good = tmp_path / "zoo.yaml"
    good.write_text(GOOD_SPEC)
    run = run_ingest(_args(tmp_path / "milvus.db", {"fan": spec, "zoo": good}), timeout_s=budget(120))
    assert run.returncode == 3, run.stdout + run.stderr[-4000:]
    assert "--max-file-schema-nodes=" in run.stderr and "the rest skipped" in run.stderr
    assert len([line for line in run.stderr.splitlines() if "max-file-schema-nodes" in line]) == 1
    added = re.search(r"corpus 'fan': (\d+) added", run.stdout)
    assert added is not None and 0 < int(added.group(1)) < 100, run.stdout  # what fit in the budget
    assert "corpus 'zoo': 1 added" in run.stdout
    assert run.peak_rss_bytes < 1536 * MIB, run.peak_rss_bytes / MIB
    assert run.seconds < budget(120), run.seconds


def test_yaml_aliases_of_one_big_value_are_counted_by_size(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(aliased_default(400, 1_000_000))  # 400 alias nodes: under the 10,000-node cap
    good = tmp_path / "zoo.yaml"
    good.write_text(GOOD_SPEC)
    run = run_ingest(_args(tmp_path / "milvus.db", {"big": spec, "zoo": good}), timeout_s=budget(120))
    assert run.returncode == 3, run.stdout + run.stderr[-4000:]
    assert "--max-yaml-alias-bytes=" in run.stderr
    assert run.peak_rss_bytes < 1024 * MIB, run.peak_rss_bytes / MIB


def test_a_corpus_metadata_budget_stops_a_corpus_whose_every_file_is_within_its_own(tmp_path: Path) -> None:
    """Per corpus, not per file: 300 small operations, each far under every per-operation and
    per-file cap, whose metadata together passes ``--max-corpus-metadata-bytes``: the operations
    up to it are ingested, the limit named, the other corpus ingested whole."""
    spec = tmp_path / "many.json"
    spec.write_text(json.dumps(fanout_operations(300, 6, 2)))  # 43 schema nodes per operation
    good = tmp_path / "zoo.yaml"
    good.write_text(GOOD_SPEC)
    args = [*_args(tmp_path / "milvus.db", {"many": spec, "zoo": good}), "--max-corpus-metadata-bytes", "100000"]
    run = run_ingest(args, timeout_s=budget(120))
    assert run.returncode == 3, run.stdout + run.stderr[-4000:]
    assert "--max-corpus-metadata-bytes=100000" in run.stderr and "the rest skipped" in run.stderr
    added = re.search(r"corpus 'many': (\d+) added", run.stdout)
    assert added is not None and 0 < int(added.group(1)) < 300, run.stdout
    assert "corpus 'zoo': 1 added" in run.stdout
