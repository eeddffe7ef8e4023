"""The limits every corpus loader works within: the one place they are defined and documented.

Corpus files come from people who did not write them (specs and SDKs of other teams), so every
file is read as hostile input: ingest must stay within memory and time whatever a file holds.
A file that goes past a limit is that file's problem (a ``LoadProblem`` naming the file and the
limit, with the ``apihelper-build ingest`` flag that raises it); the ingest goes on with the next
file and corpus and exits 3. The defaults are far above real corpora (the Backend.AI spec is
1.3 MB with 17 refs per operation at most; its client wheel has 200 modules) and far below what
would hurt a build machine.

``IngestLimits`` is built once by the CLI (``apihelper-build ingest --max-...``) and passed down
to ``load_corpus`` and every loader; nothing reads limits from anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MIB = 1024 * 1024


def _limit(default: int, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class IngestLimits:
    """Per-file and per-corpus ceilings for corpus loading (see the module docstring).

    Each field is an ``apihelper-build ingest`` flag: ``max_file_bytes`` is ``--max-file-bytes``.
    """

    max_file_bytes: int = _limit(
        64 * MIB, "bytes of one file read whole: an OpenAPI spec, a JSONL or function-schema file"
    )
    max_member_bytes: int = _limit(
        4 * MIB, "bytes of one Python source in a package: an archive member or a .py file of a directory"
    )
    max_total_bytes: int = _limit(
        512 * MIB, "bytes one package corpus reads in all (archive members decompressed, directory files)"
    )
    max_members: int = _limit(20_000, "entries of one package: archive members (all kinds) or directory entries")
    max_depth: int = _limit(64, "nesting depth of a JSON/YAML value (objects and arrays inside each other)")
    max_ref_expansions: int = _limit(2_000, "$refs followed while building one OpenAPI operation's schemas")
    max_schema_nodes: int = _limit(20_000, "schema nodes visited while building one OpenAPI operation's schemas")
    max_file_schema_nodes: int = _limit(
        500_000,
        "schema nodes visited while building all the operations of one OpenAPI file (the rest skipped)",
    )
    max_yaml_alias_nodes: int = _limit(
        10_000, "nodes the aliases of one YAML file may copy in all (a billion-laughs file copies 10^9)"
    )
    max_yaml_alias_bytes: int = _limit(
        16 * MIB, "bytes of text the aliases of one YAML file may copy in all (one big value, many aliases)"
    )
    max_docs: int = _limit(200_000, "documents in one corpus; the rest of its input is skipped and reported")
    max_corpus_metadata_bytes: int = _limit(
        64 * MIB,
        "bytes of metadata (as JSON) the docs of one corpus hold in all; the rest of its input is skipped and reported",
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"IngestLimits.{item.name} must be a positive integer, got {value!r}")

    @staticmethod
    def flag(name: str) -> str:
        """The CLI flag of a field: ``max_file_bytes`` -> ``--max-file-bytes``."""
        return "--" + name.replace("_", "-")

    @staticmethod
    def describe() -> list[tuple[str, int, str]]:
        """``(flag, default, what it bounds)`` for every limit: the CLI help and the table in docs/corpora.md."""
        return [(IngestLimits.flag(f.name), f.default, f.metadata["help"]) for f in fields(IngestLimits)]  # type: ignore[misc]


DEFAULT_LIMITS = IngestLimits()


class LimitExceeded(Exception):
    """A file went past one of the :class:`IngestLimits`; the message names the limit's flag
    and the value in force, e.g. ``nesting deeper than 64 (limit --max-depth=64)``."""

    def __init__(self, limits: IngestLimits, limit: str, detail: str) -> None:
        self.limit = limit
        super().__init__(f"{detail} (limit {IngestLimits.flag(limit)}={getattr(limits, limit)})")


__all__ = ["DEFAULT_LIMITS", "MIB", "IngestLimits", "LimitExceeded"]
