"""The client distribution installs in a fresh venv without torch/transformers/ray and calls a
running server."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import bertserve_client
from bertserve_client import BertClient
client = BertClient(sys.argv[1], timeout=30)
response = client.fill_mask("Paris is the [MASK] of France.", top_k=3)
assert len(response.results[0].masks[0].candidates) == 3
pairs = client.next_sentence("It rained.", "The street was wet.")
assert 0.0 < pairs.results[0].is_next_probability < 1.0
results = list(client.fill_mask_stream(["A [MASK].", "no mask", "The [MASK] sat."]))
assert sorted(r.request_id for r in results) == ["0", "1", "2"]
assert [r.request_id for r in results if not r.ok] == ["1"]
heavy = [m for m in ("torch", "transformers", "ray", "numpy") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
print("OK")
"""


def test_client_installs_without_torch_and_calls_the_server(server: RunningServer, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for heavy in ("torch", "transformers", "ray", "numpy"):
        assert f"\n{heavy}==" not in "\n" + listed, f"{heavy} was installed with the client"
    done = subprocess.run(
        [str(python), "-c", SCRIPT, server.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY=\n" in done.stdout and done.stdout.strip().endswith("OK")
    assert sys.prefix != str(env_dir)
