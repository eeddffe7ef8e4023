"""The committed stubs in clients/apihelper/v1 are exactly what protos/generate.py makes."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

from tests.support import ROOT

COMMITTED = ROOT / "clients" / "apihelper" / "v1"


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("apihelper_protos_generate", ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_regeneration(tmp_path: Path) -> None:
    generator = _load_generator()
    generator.generate(tmp_path)  # type: ignore[attr-defined]
    fresh = tmp_path / "apihelper" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir() if p.is_file())
    committed_files = sorted(p.name for p in COMMITTED.iterdir() if p.is_file() and p.suffix != ".pyc")
    assert fresh_files == committed_files
    assert "apihelper_pb2.pyi" in fresh_files  # typed stubs are part of the contract
    _, mismatch, errors = filecmp.cmpfiles(fresh, COMMITTED, fresh_files, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make proto` and commit"


def test_proto_package_is_versioned() -> None:
    from apihelper.v1 import apihelper_pb2

    assert apihelper_pb2.DESCRIPTOR.package == "apihelper.v1"
    assert "ApiHelper" in apihelper_pb2.DESCRIPTOR.services_by_name
