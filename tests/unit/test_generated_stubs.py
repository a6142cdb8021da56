"""The committed stubs in client/bertserve/v1 are exactly what `python scripts/gen_protos.py` makes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    _generator().generate(tmp_path)
    fresh = tmp_path / "bertserve" / "v1"
    committed = ROOT / "client" / "bertserve" / "v1"
    fresh_files = {p.name: p.read_bytes() for p in fresh.iterdir() if p.is_file()}
    committed_files = {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()}
    stale = sorted(
        n for n in fresh_files.keys() | committed_files.keys() if fresh_files.get(n) != committed_files.get(n)
    )
    assert not stale, f"stale generated stubs {stale}: run `python scripts/gen_protos.py`"


def test_every_proto_file_has_stubs() -> None:
    protos = sorted(p.stem for p in (ROOT / "protos" / "bertserve" / "v1").glob("*.proto"))
    stubs = sorted(
        p.name.removesuffix("_pb2.py") for p in (ROOT / "client" / "bertserve" / "v1").glob("*_pb2.py")
    )
    assert protos == stubs
