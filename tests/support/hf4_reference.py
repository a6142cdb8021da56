"""The question-answering pipeline of transformers 4.57.6, run in its own virtual environment.

transformers 5 (the project's version) removed `pipeline("question-answering")`. The reference
for AnswerQuestion is therefore the real pipeline of the last 4.x release, not a rebuild of its
steps: `ensure_venv` creates, once, `.venv-hf4/` in the repository root with the pinned
packages below, and `answer_questions` sends a batch of inputs to `hf4_qa_runner.py`, which that
environment's python runs, exchanging JSON on stdin and stdout.

The environment holds only what must differ from the project's: transformers 4.57.6, a
huggingface-hub below 1.0 and a tokenizers release that transformers 4.57.6 accepts (it checks
`tokenizers>=0.22.0,<=0.23.0` on import; the project has a newer one). Everything else (torch,
numpy, safetensors, ...) comes from the project's own venv through a `.pth` file, which `site`
appends after the environment's own site-packages, so the pinned copies win and torch is not
downloaded twice. The pins are installed with `--no-deps` for the same reason.

Creating it takes about half a minute (three wheels from PyPI). With no registry it fails with
a message that says so: the parity tests fail rather than skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-hf4"
RUNNER = Path(__file__).with_name("hf4_qa_runner.py")
TRANSFORMERS_VERSION = "4.57.6"
PINS = (
    f"transformers=={TRANSFORMERS_VERSION}",
    # transformers 4.57 requires huggingface-hub>=0.34,<1.0 and tokenizers>=0.22,<=0.23.0.
    "huggingface-hub==0.36.2",
    "tokenizers==0.22.2",
)
_STAMP = "bertserve-reference.json"
_PTH = "bertserve-main-venv.pth"
_PIP_TIMEOUT_S = 600

Log = Callable[[str], None]
"""Where progress lines go: print, or `terminal_log(config)` under pytest."""


class ReferenceUnavailable(RuntimeError):
    """The reference environment could not be created (no registry, a failed install)."""


@dataclass(frozen=True)
class QACase:
    """One pipeline call: question, context and the pipeline's keyword arguments."""

    question: str
    context: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineAnswer:
    answer: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class PipelineResult:
    """The pipeline's answers, best first (always a list), or the exception it raised."""

    answers: tuple[PipelineAnswer, ...] = ()
    error: str | None = None


def ensure_venv(log: Log = print, venv: Path = VENV) -> Path:
    """The reference environment's python, creating the environment first if it is missing or
    was made for other pins or another project venv. Safe to call from parallel processes."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _locked(venv.with_name(venv.name + ".lock")):
        python = venv / "bin" / "python"
        wanted = _stamp()
        stamp = venv / _STAMP
        if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
            return python
        started = time.monotonic()
        log(f"hf4 reference: creating {venv} with {' '.join(PINS)} (once; about half a minute)")
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "create the virtual environment", log)
        _link_main_site_packages(python)
        _run(
            [str(python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", *PINS],
            "install the pinned packages from PyPI (is the registry reachable?)",
            log,
        )
        versions = _run([str(python), "-I", str(RUNNER), "--versions"], "import the reference", log)
        stamp.write_text(json.dumps(wanted))  # last: an interrupted build is redone next time
        log(f"hf4 reference: ready in {time.monotonic() - started:.0f} s: {versions.strip()}")
        return python


def answer_questions(checkpoint: Path, cases: Sequence[QACase], log: Log = print) -> list[PipelineResult]:
    """`pipeline("question-answering", model=checkpoint)` of transformers 4.57.6 on each case,
    in one subprocess (the model loads once)."""
    python = ensure_venv(log)
    request = {
        "checkpoint": str(checkpoint),
        "cases": [{"question": c.question, "context": c.context, "options": dict(c.options)} for c in cases],
    }
    done = subprocess.run(
        [str(python), "-I", str(RUNNER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=_PIP_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the transformers {TRANSFORMERS_VERSION} runner failed:\n{done.stderr[-3000:]}")
    reply = json.loads(done.stdout)
    if reply["transformers"] != TRANSFORMERS_VERSION:
        raise RuntimeError(
            f"the reference runs transformers {reply['transformers']}, not {TRANSFORMERS_VERSION}"
        )
    return [_result(item) for item in reply["results"]]


def terminal_log(config: pytest.Config) -> Log:
    """Write progress straight to the terminal, past pytest's output capture: building the
    environment takes a while and should say so."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return print

    def log(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return log


def _result(item: Mapping[str, Any]) -> PipelineResult:
    if "error" in item:
        return PipelineResult(error=str(item["error"]))
    answers = tuple(
        PipelineAnswer(str(a["answer"]), float(a["score"]), int(a["start"]), int(a["end"]))
        for a in item["answers"]
    )
    return PipelineResult(answers=answers)


def _stamp() -> dict[str, Any]:
    """What the environment was made for: a change in any of these rebuilds it."""
    return {
        "pins": list(PINS),
        "main_site_packages": sysconfig.get_paths()["purelib"],
        "python": sys.version,
        "base_prefix": sys.base_prefix,
    }


def _link_main_site_packages(python: Path) -> None:
    """Let the reference import the project's torch, numpy, safetensors and the rest: a .pth
    line is appended to sys.path after the environment's own site-packages, so its pinned
    transformers, huggingface-hub and tokenizers shadow the project's newer ones."""
    own = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    main_site = sysconfig.get_paths()["purelib"]
    if Path(own).resolve() == Path(main_site).resolve():
        raise ReferenceUnavailable("the reference environment resolved to the project's own site-packages")
    Path(own, _PTH).write_text(main_site + "\n")


def _run(cmd: Sequence[str], what: str, log: Log) -> str:
    log(f"hf4 reference: {' '.join(cmd)}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ReferenceUnavailable(f"could not {what}: no answer in {_PIP_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise ReferenceUnavailable(
            f"could not {what}: `{' '.join(cmd)}` exited {done.returncode}.\n"
            f"The AnswerQuestion parity tests need transformers {TRANSFORMERS_VERSION} from PyPI.\n{tail}"
        )
    return done.stdout


def _offline_env() -> dict[str, str]:
    """No hub: the checkpoints are local directories, and nothing may be downloaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock: parallel test processes build the environment once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
