"""Run `mypy --strict` on the installed package names and on bench/: `python scripts/typecheck.py`.

The folders server/, workers/, jobs/ and client/bertserve/v1 are installed as bertserve.server,
bertserve.workers, bertserve.jobs and bertserve.v1. Editable installs reach them through an import hook that
mypy cannot follow, so this lays out links under .mypy-src/ with the installed names. bench/ is not
installed: it runs from the repository root (`python -m bench`), where mypy finds it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINKS = {
    "server": ROOT / "server",
    "workers": ROOT / "workers",
    "jobs": ROOT / "jobs",
    "v1": ROOT / "client" / "bertserve" / "v1",
}


def main() -> int:
    package = ROOT / ".mypy-src" / "bertserve"
    package.mkdir(parents=True, exist_ok=True)
    for name, target in LINKS.items():
        link = package / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(target, package))
    env = {**os.environ, "MYPYPATH": f"{package.parent}{os.pathsep}{ROOT / 'client'}"}
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "-p",
        "bertserve.server",
        "-p",
        "bertserve.workers",
        "-p",
        "bertserve.jobs",
        "-p",
        "bertserve_client",
        "-p",
        "bench",
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
