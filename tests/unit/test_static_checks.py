"""ruff (lint + format) and mypy --strict pass on the project's own code, bench/ included: the
paths of `make lint` (the Makefile's LINT_PATHS) and scripts/typecheck.py's mypy set."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_paths() -> list[str]:
    """The Makefile's LINT_PATHS: what `make lint` runs ruff on, so the two never differ."""
    found = re.search(r"^LINT_PATHS :=(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile has no LINT_PATHS line"
    return found.group(1).split()


PATHS = _lint_paths()


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_lint_and_type_checks_cover_the_benchmark() -> None:
    assert {"server", "workers", "client/bertserve_client", "tests", "scripts", "bench"} <= set(PATHS)
    assert '"bench"' in (ROOT / "scripts" / "typecheck.py").read_text()


def test_ruff_lint_and_format_are_clean() -> None:
    lint = _run(sys.executable, "-m", "ruff", "check", *PATHS)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run(sys.executable, "-m", "ruff", "format", "--check", *PATHS)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_is_clean() -> None:
    done = _run(sys.executable, "scripts/typecheck.py")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_test_modules_have_unique_basenames() -> None:
    """tests/ has no __init__.py per folder (pytest's rootdir import mode), so two test files with
    one basename in different folders stop collection of the whole suite ("import file
    mismatch")."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        other = seen.setdefault(path.name, path)
        assert other == path, f"{other.relative_to(ROOT)} and {path.relative_to(ROOT)} share a basename"
