"""Settings: flags over environment over defaults; bad values fail with one line."""

from __future__ import annotations

import argparse

import pytest

from bertserve.server.cli import build_parser
from bertserve.server.settings import GROUPS, Settings, from_sources


def _parse(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(["serve", *argv]))


def test_defaults_serve_bert_base_cased_on_loopback() -> None:
    s = from_sources({}, env={})
    assert s.model == "bert-base-cased"
    assert s.host == "127.0.0.1" and s.port == 50051
    assert s.served_name == "bert-base-cased"


def test_environment_sets_fields_and_flags_win() -> None:
    env = {
        "BERTSERVE_REPLICAS": "3",
        "BERTSERVE_MAX_WAIT_MS": "7.5",
        "BERTSERVE_DEMO": "true",
        "BERTSERVE_MODEL": "/models/x",
    }
    s = from_sources(_parse("--replicas", "2"), env=env)
    assert s.replicas == 2
    assert s.max_wait_ms == 7.5
    assert s.demo is True
    assert s.served_name == "demo"


def test_every_settings_field_has_a_flag_and_documented_help() -> None:
    parser = build_parser()
    serve = next(
        a
        for a in parser._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
        if isinstance(a, argparse.ArgumentParser) and a.prog.endswith("serve")
    )
    dests = {a.dest: a for a in serve._actions}
    for name, f in Settings.__dataclass_fields__.items():
        if f.metadata["secret"]:  # environment and file only: argv is visible to other users
            assert name not in dests, name
            continue
        assert name in dests, name
        assert f.metadata["help"].rstrip(")") in (dests[name].help or ""), name
        assert "default: " in (dests[name].help or ""), name


def test_every_settings_field_names_a_help_group() -> None:
    """`bertserve serve --help` groups the flags by the field's `group`; a new field needs one."""
    missing = [
        name for name, f in Settings.__dataclass_fields__.items() if f.metadata.get("group") not in GROUPS
    ]
    assert missing == [], f"fields without a group of settings.GROUPS (add group= to their _f): {missing}"


def test_every_field_is_read_from_its_environment_variable() -> None:
    """The rule `serve --help` states once: --max-batch-size is BERTSERVE_MAX_BATCH_SIZE."""
    for name, f in Settings.__dataclass_fields__.items():
        if f.metadata["choices"] or name in ("config", "auth_token_file", "auth_token"):
            continue
        default, kind = f.default, str(f.type)
        value = str(not default) if kind == "bool" else str(default + 7) if kind in ("int", "float") else "x"
        try:
            s = from_sources({}, env={f"BERTSERVE_{name.upper()}": value})
        except ValueError:
            continue  # a value validate() rejects alone (e.g. min_replicas without max_replicas)
        assert getattr(s, name) != default, name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BERTSERVE_REPLICAS": "many"}, "BERTSERVE_REPLICAS='many' is not a valid int"),
        ({"BERTSERVE_DEVICE": "tpu"}, "BERTSERVE_DEVICE must be one of auto, cpu, cuda"),
        ({"BERTSERVE_MAX_BATCH_SIZE": "0"}, "--max-batch-size must be at least 1"),
        ({"BERTSERVE_DEMO": "perhaps"}, "BERTSERVE_DEMO=.perhaps. is not a valid bool"),
        ({"BERTSERVE_REPLICA_CHOICE": "random"}, "BERTSERVE_REPLICA_CHOICE must be one of warm, spread"),
    ],
)
def test_bad_environment_values_are_rejected(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        from_sources({}, env=env)


def test_model_name_defaults_to_last_path_component() -> None:
    assert from_sources({"model": "/data/models/my-bert/"}, env={}).served_name == "my-bert"
    assert (
        from_sources({"model": "google-bert/bert-base-cased", "model_name": "b"}, env={}).served_name == "b"
    )
