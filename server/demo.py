"""`bertserve serve --demo`: a set of tiny random-weight models, one per kind of checkpoint, so
that every task can be tried offline.

| model | head | tasks |
| --- | --- | --- |
| `demo` | BertForPreTraining | FillMask, NextSentence, Embed, Tokenize (the default model of each) |
| `demo-emotion` | BertForSequenceClassification, the six labels of dair-ai/emotion | ClassifySequence |
| `demo-ner` | BertForTokenClassification, the nine CoNLL-2003 labels | ClassifyTokens |
| `demo-squad` | BertForQuestionAnswering | AnswerQuestion |

They are built once, in a subprocess (the front end never imports torch), by
`python -m bertserve.workers.tiny_bert --demo-set DIR`, and cached in `demo_dir`. Their
predictions are meaningless: the weights are random. Each replica gets one thread, and a local
Ray instance is told of at least `DEMO_RAY_CPUS` CPUs (tiny models share cores well), so that the
four models and a few more replicas fit on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bertserve.server import config_file
from bertserve.server.config_file import ModelEntry
from bertserve.server.logs import get_logger
from bertserve.server.settings import Settings
from bertserve.workers.tiny_bert import DEMO_SET, is_tiny_checkpoint

DEMO_NOTICE = "DEMO MODEL: random weights and a generated vocabulary; its predictions are meaningless."
DEMO_RAY_CPUS = 8
_log = get_logger(component="demo")


class DemoBuildError(RuntimeError):
    """The demo models could not be built; the message is one line."""


def checkpoints(settings: Settings) -> dict[str, Path]:
    """The demo models' directories, built first when any is missing."""
    root = Path(settings.demo_dir).expanduser()
    wanted = {name: root / name for name in DEMO_SET}
    if all(is_tiny_checkpoint(path) for path in wanted.values()):
        return wanted
    _log.info("building_demo_checkpoints", path=str(root), models=list(wanted))
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "bertserve.workers.tiny_bert", "--demo-set", str(partial)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoBuildError(f"could not build the demo models in {root}: {done.stderr.strip()[-300:]}")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return wanted


def entries(settings: Settings) -> list[ModelEntry]:
    """One model entry per demo model, with the server's settings (one thread per replica
    unless --threads-per-replica says otherwise)."""
    if settings.config and config_file.load(settings.config).models:
        raise config_file.ConfigError(
            "--demo serves its own models: drop --demo or the configuration file's `models` list"
        )
    threads = settings.threads_per_replica or 1
    return [
        ModelEntry(
            dataclasses.replace(
                settings, demo=False, model=str(path), model_name=name, threads_per_replica=threads
            )
        )
        for name, path in checkpoints(settings).items()
    ]


def ray_cpus(settings: Settings) -> int:
    """The CPUs a local Ray instance is told of in demo mode (--ray-num-cpus wins)."""
    return settings.ray_num_cpus or max(os.cpu_count() or 1, DEMO_RAY_CPUS)
