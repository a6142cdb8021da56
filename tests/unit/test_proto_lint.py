"""The protos pass `buf lint` with buf's STANDARD and COMMENTS rules (protos/buf.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parents[2] / "protos"
BUF = "@bufbuild/buf@1.75.0"


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs Node's npx to run buf")
def test_protos_pass_buf_lint() -> None:
    done = subprocess.run(
        ["npx", "-y", BUF, "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
