"""Generate the Python stubs of the public contract: `python scripts/gen_protos.py`.

Writes `_pb2.py`, `_pb2.pyi`, `_pb2_grpc.py` and `_pb2_grpc.pyi` for every file in
protos/bertserve/v1 into client/bertserve/v1 (package `bertserve.v1`, shipped by the
`bertserve-client` distribution). The output is a pure function of the .proto files and the
pinned grpcio-tools / mypy-protobuf versions, so tests/unit/test_generated_stubs.py can
regenerate into a temporary folder and fail when the committed files are stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("bertserve") / "v1"
DEFAULT_OUT = ROOT / "client"
INIT_TEXT = '"""Generated protobuf and gRPC stubs for package bertserve.v1 (do not edit)."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc over protos/bertserve/v1 and return the files written under out_root."""
    from grpc_tools import protoc  # dev-only dependency

    protos = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    plugin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        target = out_root / PROTO_PACKAGE
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        written = []
        for src in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            dst = target / src.name
            shutil.copyfile(src, dst)
            written.append(dst)
        (target / "__init__.py").write_text(INIT_TEXT)
        (target / "py.typed").write_text("")
        written += [target / "__init__.py", target / "py.typed"]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: client/)")
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out))


if __name__ == "__main__":
    main()
