"""Find a checkpoint's tokenizer and config files: a local directory or a Hub id.

The front end needs only the small files (tokenizer, config); replicas load the weights
themselves through transformers, from the same directory or Hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertserve.workers.errors import first_line

_SMALL_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
]


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found or read. The message is one line for people."""


@dataclass(frozen=True)
class Checkpoint:
    """checkpoint: what replicas pass to from_pretrained (Hub id or absolute directory).
    files_dir: a local directory holding config.json and the tokenizer files."""

    checkpoint: str
    revision: str
    files_dir: Path
    is_local: bool

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.files_dir / "config.json").read_text())
        return data


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(name: str, revision: str = "") -> Checkpoint:
    """Resolve a local directory or download the small files of a Hub model."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointError(
                f"{name} is not a Hugging Face checkpoint directory (no config.json); "
                "pass a directory written by save_pretrained, a Hub id such as bert-base-cased, or --demo"
            )
        return Checkpoint(str(path.resolve()), "", path.resolve(), True)
    if _looks_like_path(name):
        raise CheckpointError(
            f"no such checkpoint directory: {name}; pass an existing directory, a Hub id such as "
            "bert-base-cased, or --demo"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name, revision=revision or None, allow_patterns=_SMALL_FILES)
    except Exception as exc:
        raise CheckpointError(
            f"cannot fetch model {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{first_line(exc, limit=200)}); without network access pass --model /path/to/checkpoint "
            "(a save_pretrained directory) or --demo"
        ) from None
    files = Path(local)
    if not (files / "config.json").is_file():
        raise CheckpointError(
            f"model {name!r} on the Hub has no config.json; is it a transformers checkpoint?"
        )
    return Checkpoint(name, revision, files, False)
