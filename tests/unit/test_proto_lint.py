"""The protos pass `buf lint` with buf's STANDARD and COMMENTS rules (protos/buf.yaml).

buf comes from the npm registry: `make setup-dev` (and so `make test`) installs the version the
Makefile pins (BUF_VERSION) into .tools/. Where it is missing the test fails rather than skips:
a set-up that cannot lint the protos should be noticed, offline as well."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def _buf() -> Path:
    """Where `make setup-dev` installs buf (the Makefile's BUF)."""
    pinned = re.search(r"^BUF_VERSION := *(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pinned, "the Makefile pins no BUF_VERSION"
    return ROOT / ".tools" / f"buf-{pinned.group(1)}" / "node_modules" / ".bin" / "buf"


def test_protos_pass_buf_lint() -> None:
    buf = _buf()
    assert buf.is_file(), f"buf is not installed ({buf}): run `make setup-dev`, which installs it with npm"
    done = subprocess.run(
        [str(buf), "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
