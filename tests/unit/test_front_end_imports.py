"""The front end never imports torch or transformers (tokenizers + numpy only)."""

from __future__ import annotations

import subprocess
import sys

FRONT_END_MODULES = [
    "bertserve.server.app",
    "bertserve.server.cli",
    "bertserve.server.servicer",
    "bertserve.server.dataplane",
    "bertserve.server.tokenization",
    "bertserve.workers.pool",
    "bertserve.workers.replica",
]


def test_front_end_modules_do_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in FRONT_END_MODULES)
        + "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
