"""Every Python block of README.md and client/README.md runs against `bertserve serve --demo`, as
a reader following the page would: per file, the ```python blocks in order, in one namespace, in
an empty working directory; any exception fails the test, naming the block's first line.

The blocks name the server as 127.0.0.1:50051 or localhost:50051, the address `make serve`
binds. The demo server here takes port 50051 when it is free; when it is not (another server on
this machine), it takes a free port and the blocks' address is replaced by it before they run
(said in the test's output).
"""

from __future__ import annotations

import os
import re
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "client/README.md")
DOC_ADDRESS = re.compile(r"(127\.0\.0\.1|localhost):50051")
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def _port_50051_free() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 50051))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def demo_server(demo_models_dir: Path) -> Iterator[RunningServer]:
    args = ["--demo", "--demo-dir", str(demo_models_dir)]
    if _port_50051_free():
        args += ["--port", "50051"]
    running = start_server(args, env={"HF_HUB_OFFLINE": "1"})
    yield running
    assert running.stop() == 0, running.log()[-3000:]


def test_both_pages_have_python_blocks() -> None:
    counts = {doc: len(python_blocks((ROOT / doc).read_text())) for doc in DOCS}
    assert all(n >= 2 for n in counts.values()), counts


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs_against_the_demo_server(
    doc: str, demo_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / doc).read_text()
    if demo_server.port != 50051:
        print(f"port 50051 is taken here: {doc}'s blocks call {demo_server.address} instead")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for line, code in python_blocks(text):
            code = DOC_ADDRESS.sub(demo_server.address, code)
            try:
                exec(compile(code, f"{doc}:{line}", "exec"), namespace)
            except Exception:
                pytest.fail(f"the block at {doc} line {line} failed:\n{traceback.format_exc()}")
    finally:
        os.chdir(cwd)
        client = namespace.get("client")
        close = getattr(client, "close", None)
        if callable(close):
            close()
