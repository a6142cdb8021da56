"""Scaling settings: admin_enabled, autoscaling bounds and windows (flags, environment, model
keys of the configuration file) and their one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertserve.server import settings
from bertserve.server.assembly import _autoscale_limits, _start_replicas
from bertserve.server.cli import build_parser
from bertserve.server.config_file import ConfigError, model_entries


def test_admin_is_off_and_autoscaling_off_by_default() -> None:
    s = settings.from_sources({}, env={})
    assert s.admin_enabled is False
    assert not _autoscale_limits(s).enabled and _start_replicas(s) == 1


def test_admin_and_autoscaling_from_flags_and_environment() -> None:
    ns = build_parser().parse_args(
        [
            "serve",
            "--admin-enabled",
            "--min-replicas",
            "2",
            "--max-replicas",
            "5",
            "--autoscale-up-window-s",
            "0.5",
        ]
    )
    s = settings.from_sources(vars(ns), env={"BERTSERVE_AUTOSCALE_TARGET_QUEUED_TOKENS": "100"})
    limits = _autoscale_limits(s)
    assert s.admin_enabled and limits.enabled
    assert (limits.min_replicas, limits.max_replicas, limits.up_window_s, limits.target_queued_tokens) == (
        2,
        5,
        0.5,
        100,
    )
    assert _start_replicas(s) == 2  # replicas (1) clamped into min..max
    assert settings.from_sources({}, env={"BERTSERVE_ADMIN_ENABLED": "1"}).admin_enabled


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BERTSERVE_MIN_REPLICAS": "3", "BERTSERVE_MAX_REPLICAS": "2"}, "min-replicas"),
        ({"BERTSERVE_MIN_REPLICAS": "2"}, "needs --max-replicas"),
        ({"BERTSERVE_MAX_REPLICAS": "-1"}, "must not be negative"),
        ({"BERTSERVE_MAX_REPLICAS": "1000"}, "<= 256"),
        ({"BERTSERVE_AUTOSCALE_TARGET_QUEUED_TOKENS": "0"}, "at least 1"),
        ({"BERTSERVE_AUTOSCALE_DOWN_IDLE_S": "-1"}, "--autoscale-down-idle-s must not be negative"),
        ({"BERTSERVE_REPLICA_PENDING_AFTER_S": "-1"}, "--replica-pending-after-s"),
    ],
)
def test_inconsistent_scaling_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        settings.from_sources({}, env=env)
    assert "\n" not in str(info.value)


def test_models_take_their_own_autoscaling_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server:\n  admin_enabled: true\n"
        "models:\n"
        "  - name: a\n    checkpoint: x\n    min_replicas: 1\n    max_replicas: 4\n"
        "    autoscale_down_idle_s: 10\n    replica_pending_after_s: 2\n"
        "  - name: b\n    checkpoint: y\n"
    )
    s = settings.from_sources({"config": str(path)}, env={})
    assert s.admin_enabled
    a, b = model_entries(s)
    assert _autoscale_limits(a.settings).max_replicas == 4 and a.settings.autoscale_down_idle_s == 10.0
    assert a.settings.replica_pending_after_s == 2.0
    assert not _autoscale_limits(b.settings).enabled
    path.write_text("models:\n  - name: a\n    checkpoint: x\n    max_replicas: 2\n    min_replicas: 3\n")
    with pytest.raises(ConfigError, match=r"models\[0\]"):
        model_entries(settings.from_sources({"config": str(path)}, env={}))
