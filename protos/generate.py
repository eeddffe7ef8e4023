"""Generate the Python gRPC stubs (with typed .pyi) from protos/ -- the one codegen script.

    python protos/generate.py            # writes into clients/
    python protos/generate.py --out DIR  # writes elsewhere (the drift test compares the two)

The stubs are committed; tests/test_proto_stubs.py regenerates them and fails on any difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "clients"
PROTO_FILES = ["apihelper/v1/apihelper.proto"]


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) for every proto file into ``out``."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    # mypy-protobuf's plugin types the gRPC stubs (sync and grpc.aio); it sits beside python.
    mypy_grpc = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not mypy_grpc.exists():
        raise SystemExit(f"{mypy_grpc} is missing: install the dev extras (make install)")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--mypy_grpc_out={out}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes modules, not packages: make every generated directory importable.
    for proto in PROTO_FILES:
        package = out / Path(proto).parent
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent
        (out / Path(proto).parent / "py.typed").touch()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args(argv).out)


if __name__ == "__main__":
    main(sys.argv[1:])
