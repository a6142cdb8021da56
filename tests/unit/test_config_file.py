"""The configuration file (YAML or TOML): server settings, the models list, per-task defaults,
and the head check that runs before any replica starts."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from bertserve.server import config_file, settings
from bertserve.server.config_file import ConfigError, model_entries
from bertserve.workers import heads
from bertserve.workers.protocol import Task

YAML = """
server:
  port: 6000
  max_wait_ms: 4
  replicas: 2
models:
  - name: bert
    checkpoint: bert-base-cased
  - name: emotion
    checkpoint: /models/emotion
    tasks: [classify_sequence]
    default_for: [classify_sequence, embed]
    replicas: 1
    gpus_per_replica: 0.5
    dtype: bfloat16
    max_batch_size: 64
"""
TOML = """
[server]
port = 6000
max_wait_ms = 4
replicas = 2

[[models]]
name = "bert"
checkpoint = "bert-base-cased"

[[models]]
name = "emotion"
checkpoint = "/models/emotion"
tasks = ["classify_sequence"]
default_for = ["classify_sequence", "embed"]
replicas = 1
gpus_per_replica = 0.5
dtype = "bfloat16"
max_batch_size = 64
"""


@pytest.mark.parametrize(("suffix", "text"), [(".yaml", YAML), (".toml", TOML)])
def test_yaml_and_toml_files_give_the_same_models(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"bertserve{suffix}"
    path.write_text(text)
    s = settings.from_sources({"config": str(path)}, env={})
    assert (s.port, s.max_wait_ms, s.replicas) == (6000, 4.0, 2)
    bert, emotion = model_entries(s)
    assert (bert.name, bert.settings.model, bert.settings.replicas, bert.tasks) == (
        "bert",
        "bert-base-cased",
        2,
        (),
    )
    assert emotion.name == "emotion" and emotion.settings.model == "/models/emotion"
    assert emotion.tasks == (Task.CLASSIFY_SEQUENCE,)
    assert emotion.default_for == (Task.CLASSIFY_SEQUENCE, Task.EMBED)
    assert (emotion.settings.replicas, emotion.settings.gpus_per_replica) == (1, 0.5)
    assert (emotion.settings.dtype, emotion.settings.max_batch_size, emotion.settings.max_wait_ms) == (
        "bfloat16",
        64,
        4.0,
    )


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    assert settings.from_sources({"config": str(path)}, env={"BERTSERVE_PORT": "7000"}).port == 7000
    assert (
        settings.from_sources({"config": str(path), "port": 8000}, env={"BERTSERVE_PORT": "7000"}).port
        == 8000
    )
    assert settings.from_sources({}, env={"BERTSERVE_CONFIG": str(path)}).port == 6000


def test_without_models_the_flags_describe_the_one_model(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 6001\n")
    s = settings.from_sources({"config": str(path), "model": "/m/ner"}, env={})
    (only,) = model_entries(s)
    assert (only.name, only.settings.model, only.tasks) == ("ner", "/m/ner", ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "models:\n  - name: a\n    checkpoint: x\n    replica: 2\n",
            "models[0]: unknown key 'replica' (did you mean 'replicas'?); the keys are listed in "
            "docs/configuration.md#model-keys",
        ),
        (
            "models:\n  - {name: a, checkpoint: x, zzz: 1}\n",
            "models[0]: unknown key 'zzz'; the keys are listed",
        ),
        (
            "models:\n  - {name: a, checkpoint: x, port: 1}\n",
            "models[0]: 'port' is a server setting, not a model key: put it under `server`",
        ),
        ("models:\n  - name: a\n", "models[0]: `checkpoint`"),
        ("models:\n  - {name: a, checkpoint: x, replicas: two}\n", "models[0]: replicas must be a int"),
        ("models:\n  - {name: a, checkpoint: x, replicas: 0}\n", "models[0]: --replicas must be at least 1"),
        ("models:\n  - {name: a, checkpoint: x, device: tpu}\n", "device must be one of auto, cpu, cuda"),
        ("models:\n  - {name: a, checkpoint: x, replica_choice: hot}\n", "must be one of warm, spread"),
        ("models:\n  - {name: a, checkpoint: x, tasks: [ner]}\n", "models[0].tasks must be a list of tasks"),
        ("models:\n  - {name: a, checkpoint: x}\n  - {name: a, checkpoint: y}\n", "a appear more than once"),
        (
            "models:\n  - {name: a, checkpoint: x, default_for: [embed]}\n"
            "  - {name: b, checkpoint: y, default_for: [embed]}\n",
            "embed has several default models: a, b",
        ),
    ],
)
def test_model_entry_mistakes_name_the_entry_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        model_entries(settings.from_sources({"config": str(path)}, env={}))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "c.yaml",
            "server:\n  prot: 1\n",
            "c.yaml: unknown server key 'prot' (did you mean 'port'?); the keys are listed in "
            "docs/configuration.md#server-keys",
        ),
        (
            "c.yaml",
            "server:\n  prot: 1\n  max_wiat_ms: 2\n",
            "unknown server keys 'max_wiat_ms' (did you mean 'max_wait_ms'?), 'prot' (did you mean 'port'?)",
        ),
        (
            "c.yaml",
            "server:\n  checkpoint: x\n",
            "'checkpoint' is a key of a model entry: put it in an entry of `models` (the server setting is "
            "'model')",
        ),
        ("c.yaml", "server: [1, 2]\n", "`server` must be a mapping"),
        ("c.yaml", "serve:\n  port: 1\n", "unknown top-level key 'serve' (did you mean 'server'?)"),
        ("c.yaml", "server:\n  port: [\n", "c.yaml is not valid YAML"),
        ("c.toml", "[server\nport = 1\n", "c.toml is not valid TOML"),
        ("c.yaml", "server:\n  port: '6000'\n", "server: port must be a int"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        settings.from_sources({"config": str(path)}, env={})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_key_error_suggests_rather_than_lists_every_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: a\n    checkpoint: x\n    replica: 2\n")
    with pytest.raises(ConfigError) as err:
        model_entries(settings.from_sources({"config": str(path)}, env={}))
    assert "max_batch_tokens" not in str(err.value) and len(str(err.value)) < 160


def test_the_docs_list_every_server_and_model_key() -> None:
    """The unknown-key errors send the reader to these two tables."""
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    server = doc.split("\n## Server keys\n", 1)[1].split("\n## ", 1)[0]
    model = doc.split("\n## Model keys\n", 1)[1].split("\n## ", 1)[0]
    for f in fields(settings.Settings):
        assert f"`{f.name}`" in server, f"docs/configuration.md, Server keys: {f.name}"
    for name in config_file.MODEL_FIELDS:
        assert f"`{name}`" in model, f"docs/configuration.md, Model keys: {name}"


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        config_file.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("architecture", "tasks"),
    [
        ("BertForMaskedLM", (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED, Task.TOKENIZE)),
        ("BertForSequenceClassification", (Task.CLASSIFY_SEQUENCE, Task.EMBED, Task.TOKENIZE)),
        ("BertForTokenClassification", (Task.CLASSIFY_TOKENS, Task.EMBED, Task.TOKENIZE)),
        ("BertForQuestionAnswering", (Task.ANSWER_QUESTION, Task.EMBED, Task.TOKENIZE)),
        (None, (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED, Task.TOKENIZE)),
    ],
)
def test_each_architecture_serves_its_heads_tasks(architecture: str | None, tasks: tuple[Task, ...]) -> None:
    config = {"architectures": [architecture]} if architecture else {}
    assert heads.possible_tasks(config) == tasks


def test_a_head_that_cannot_serve_its_configured_task_is_named() -> None:
    config = {"architectures": ["BertForSequenceClassification"]}
    with pytest.raises(heads.HeadMismatch) as err:
        heads.check_declared(config, (Task.CLASSIFY_TOKENS,), "ner")
    assert str(err.value) == (
        "model 'ner' is configured for ClassifyTokens but its checkpoint is a BertForSequenceClassification "
        "(sequence-classification head), which serves ClassifySequence, Embed, Tokenize"
    )
    with pytest.raises(heads.HeadMismatch, match="unsupported architecture GPT2LMHeadModel"):
        heads.possible_tasks({"architectures": ["GPT2LMHeadModel"]})
