"""The configuration file: server settings and the models one server hosts (YAML or TOML).

    # bertserve.yaml
    server:                      # any `bertserve serve` setting, by field name (optional)
      port: 50051
      max_wait_ms: 2
    models:                      # served in this order; each inherits the server settings
      - name: bert               # what requests put in `model`
        checkpoint: bert-base-cased
        replicas: 2
      - name: emotion
        checkpoint: /models/bert-emotion
        tasks: [classify_sequence]   # checked against the checkpoint's head at start-up
        default_for: [classify_sequence, embed]
        gpus_per_replica: 0.5
        dtype: bfloat16
        max_batch_size: 64

Precedence for server settings: command-line flag > BERTSERVE_* variable > this file >
built-in default. A model entry's own keys win over the server settings. docs/configuration.md
documents every key.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib
import yaml

from bertserve.server.settings import Settings
from bertserve.workers.protocol import Task

# Settings a model entry may set for itself (the rest are server-wide): those marked per_model.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("per_model"))
MODEL_ALIASES = {"name": "model_name", "checkpoint": "model"}
MODEL_LISTS = ("tasks", "default_for")
TASK_VALUES = tuple(t.value for t in Task)
# Where an unknown-key error sends the reader for the full list.
SERVER_KEYS_DOC = "docs/configuration.md#server-keys"
MODEL_KEYS_DOC = "docs/configuration.md#model-keys"


class ConfigError(ValueError):
    """The configuration file is unreadable or inconsistent; the message names the key."""


@dataclass(frozen=True)
class ModelEntry:
    """One model to serve: its settings (server settings with the entry's keys applied), the
    tasks the configuration asks of it, and the tasks it is the default model for."""

    settings: Settings
    tasks: tuple[Task, ...] = ()
    default_for: tuple[Task, ...] = ()

    @property
    def name(self) -> str:
        return self.settings.served_name


@dataclass(frozen=True)
class ConfigFile:
    server: dict[str, Any]
    models: tuple[dict[str, Any], ...]


def load(path: str | Path) -> ConfigFile:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"{p.name} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {reason}"
        ) from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}: the top level must be a mapping with `server` and `models`")
    unknown = set(data) - {"server", "models"}
    if unknown:
        raise ConfigError(
            f"{p.name}: {unknown_keys(unknown, ('server', 'models'), 'top-level key')}; "
            "the top level takes `server` and `models`"
        )
    server = data.get("server") or {}
    models = data.get("models") or []
    if not isinstance(server, dict):
        raise ConfigError(f"{p.name}: `server` must be a mapping of setting names to values")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"{p.name}: `models` must be a list of mappings")
    known = {f.name for f in fields(Settings)} - {"config"}
    bad = set(server) - known
    if bad:
        model_only = sorted(bad & {*MODEL_ALIASES, *MODEL_LISTS})
        if model_only:
            key = model_only[0]
            instead = f" (the server setting is {MODEL_ALIASES[key]!r})" if key in MODEL_ALIASES else ""
            raise ConfigError(
                f"{p.name}: {key!r} is a key of a model entry: put it in an entry of `models`{instead}"
            )
        raise ConfigError(
            f"{p.name}: {unknown_keys(bad, known, 'server key')}; the keys are listed in {SERVER_KEYS_DOC}"
        )
    return ConfigFile(dict(server), tuple(dict(m) for m in models))


def unknown_keys(keys: Iterable[str], known: Iterable[str], kind: str = "key") -> str:
    """Each key with its closest match among `known` (difflib), for a one-line error:
    `unknown key 'replica' (did you mean 'replicas'?)`."""
    choices = sorted(known)
    parts = []
    for key in sorted(keys, key=str):
        close = difflib.get_close_matches(str(key), choices, n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return f"unknown {kind}{'' if len(parts) == 1 else 's'} {', '.join(parts)}"


def _check_model_keys(raw: dict[str, Any], where: str) -> None:
    """A model entry takes MODEL_FIELDS, their aliases and MODEL_LISTS; a server-wide setting in it
    is named as such, any other key with its close matches."""
    model_keys = ({*MODEL_FIELDS, *MODEL_ALIASES} - set(MODEL_ALIASES.values())) | set(MODEL_LISTS)
    bad = {k for k in raw if MODEL_ALIASES.get(k, k) not in MODEL_FIELDS and k not in MODEL_LISTS}
    if not bad:
        return
    server_wide = sorted(bad & {f.name for f in fields(Settings)})
    if server_wide:
        raise ConfigError(
            f"{where}: {server_wide[0]!r} is a server setting, not a model key: put it under `server`"
        )
    raise ConfigError(f"{where}: {unknown_keys(bad, model_keys)}; the keys are listed in {MODEL_KEYS_DOC}")


def coerce(name: str, value: Any, where: str) -> Any:
    """Check a file value against the Settings field's type and choices."""
    field = next(f for f in fields(Settings) if f.name == name)
    kind = str(field.type)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        shown = "a hidden value" if field.metadata["secret"] else repr(value)
        raise ConfigError(f"{where}: {name} must be a {kind}, got {shown}")
    choices = field.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(choices)}")
    return float(value) if kind == "float" else value


def _tasks(value: Any, where: str) -> tuple[Task, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(v not in TASK_VALUES for v in value):
        raise ConfigError(f"{where} must be a list of tasks from {', '.join(TASK_VALUES)}")
    return tuple(Task(v) for v in value)


def model_entries(settings: Settings) -> list[ModelEntry]:
    """The models to serve: the file's `models` list, or one model from the settings."""
    if not settings.config:
        return [ModelEntry(settings)]
    config = load(settings.config)
    if not config.models:
        return [ModelEntry(settings)]
    entries = []
    for i, raw in enumerate(config.models):
        where = f"models[{i}]"
        _check_model_keys(raw, where)
        overrides: dict[str, Any] = {}
        for key, value in raw.items():
            if key in MODEL_LISTS:
                continue
            name = MODEL_ALIASES.get(key, key)
            overrides[name] = coerce(name, value, where)
        if "model" not in overrides:
            raise ConfigError(f"{where}: `checkpoint` (a Hub id or a local directory) is required")
        overrides.setdefault("model_name", "")
        model_settings = dataclasses.replace(settings, demo=False, **overrides)
        try:
            model_settings.validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        entries.append(
            ModelEntry(
                model_settings,
                _tasks(raw.get("tasks", []), f"{where}.tasks"),
                _tasks(raw.get("default_for", []), f"{where}.default_for"),
            )
        )
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model names must be unique; {', '.join(dupes)} appear more than once")
    for task in Task:
        claiming = [e.name for e in entries if task in e.default_for]
        if len(claiming) > 1:
            raise ConfigError(f"{task.value} has several default models: {', '.join(claiming)}")
    return entries
