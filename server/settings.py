"""Server settings: the only place the environment is read.

Each field is a CLI flag of `bertserve serve` (`--max-batch-size`) and an environment
variable (`BERTSERVE_MAX_BATCH_SIZE`); a flag wins over the variable, the variable over the
default. Units are in the field names or their help.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "BERTSERVE_"
DEFAULT_MODEL = "bert-base-cased"


def _f(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    config: str = _f(
        "",
        "YAML or TOML file with server settings and the list of models to serve (docs/configuration.md)",
    )
    # Model
    model: str = _f(DEFAULT_MODEL, "Hub id (e.g. bert-base-cased) or local checkpoint directory")
    model_name: str = _f("", "name clients use to select the model (default: last part of --model)")
    revision: str = _f("", "Hub revision: branch, tag or commit (default: main)")
    demo: bool = _f(
        False, "serve a tiny random-weight BERT built locally (no network; predictions meaningless)"
    )
    demo_dir: str = _f("~/.cache/bertserve/demo", "where the --demo checkpoint is built and cached")
    # Replicas
    replicas: int = _f(1, "model replicas (Ray actors)")
    device: str = _f(
        "auto",
        "replica device: auto (cuda if the Ray cluster has GPUs), cpu or cuda",
        ("auto", "cpu", "cuda"),
    )
    gpus_per_replica: float = _f(1.0, "GPUs each replica asks Ray for (fractions share a GPU)")
    threads_per_replica: int = _f(0, "torch threads per CPU replica (0: CPUs / replicas)")
    dtype: str = _f(
        "auto",
        "weights and compute dtype: auto (bfloat16 on GPU; on CPU bfloat16 when the CPU has bf16 "
        "instructions and a probe batch agrees with float32, else float32), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
    )
    max_restarts: int = _f(3, "times Ray restarts a crashed replica (-1: forever)")
    backend: str = _f(
        "torch", "replica backend: torch, or fake (synthetic outputs, for tests)", ("torch", "fake")
    )
    fake_delay_ms: float = _f(0.0, "fake backend: compute time per batch, in milliseconds")
    # Batching
    max_batch_size: int = _f(32, "most sequences in one batch")
    max_batch_tokens: int = _f(16384, "most padded tokens (batch size x longest sequence) in one batch")
    max_wait_ms: float = _f(2.0, "longest a request waits for its batch to fill while replicas are busy, ms")
    batches_per_replica: int = _f(2, "batches in flight per replica (1 running + queued)")
    max_queued_requests: int = _f(4096, "queued inputs per model; more get RESOURCE_EXHAUSTED")
    # Request limits
    max_inputs_per_request: int = _f(64, "most texts or pairs in one request")
    max_text_chars: int = _f(100_000, "most characters in one text")
    max_top_k: int = _f(100, "largest FillMask top_k")
    # Network
    host: str = _f("127.0.0.1", "address to bind; use 0.0.0.0 to listen on every interface")
    port: int = _f(50051, "gRPC port (0: pick a free one)")
    port_file: str = _f("", "write the bound port to this file once serving (for scripts and tests)")
    grace_period_s: float = _f(10.0, "on SIGTERM/SIGINT, seconds in-flight requests get to finish")
    metrics_port: int = _f(
        0, "Prometheus metrics HTTP port, GET /metrics on --host (0: off; docs/metrics.md)"
    )
    # Ray
    ray_address: str = _f("", "Ray cluster to join (e.g. ray-head:6379); empty starts a local one")
    ray_num_cpus: int = _f(0, "CPUs for a local Ray instance (0: all)")
    startup_timeout_s: float = _f(600.0, "seconds to wait for every model's first replica to warm up")
    # Logs
    log_level: str = _f("info", "log level", ("debug", "info", "warning", "error"))
    log_format: str = _f("json", "log format", ("json", "console"))

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.demo:
            return "demo"
        return self.model.rstrip("/").split("/")[-1] or self.model

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for inconsistent settings."""
        positive = (
            "replicas",
            "max_batch_size",
            "max_batch_tokens",
            "batches_per_replica",
            "max_queued_requests",
            "max_inputs_per_request",
            "max_text_chars",
            "max_top_k",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("--max-wait-ms must not be negative")
        if self.gpus_per_replica <= 0:
            raise ValueError("--gpus-per-replica must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in 0..65535")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("--metrics-port must be in 0..65535 (0: off)")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field; defaults stay None so the environment can fill them."""
    for f in fields(Settings):
        help_text = f"{f.metadata['help']} [env {_env(f.name)}; default {f.default!r}]"
        if f.type == "bool":
            parser.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                action="store_const",
                const=True,
                default=None,
                help=help_text,
            )
        else:
            caster = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                type=caster,
                default=None,
                choices=f.metadata["choices"],
                help=help_text,
            )


def from_sources(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from CLI values (None = not given), the environment and the
    configuration file's `server` section, in that order of precedence."""
    env = os.environ if env is None else env
    cli = cli or {}
    values: dict[str, Any] = {}
    config_path = cli.get("config") or env.get(_env("config"), "")
    if config_path:
        from bertserve.server import config_file

        for name, value in config_file.load(config_path).server.items():
            values[name] = config_file.coerce(name, value, "server")
    for f in fields(Settings):
        given = cli.get(f.name)
        if given is not None:
            values[f.name] = given
            continue
        raw = env.get(_env(f.name))
        if raw is None:
            continue
        try:
            if f.type == "bool":
                values[f.name] = _parse_bool(raw)
            elif f.type == "int":
                values[f.name] = int(raw)
            elif f.type == "float":
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        except ValueError:
            raise ValueError(f"{_env(f.name)}={raw!r} is not a valid {f.type}") from None
        choices = f.metadata["choices"]
        if choices and values[f.name] not in choices:
            raise ValueError(f"{_env(f.name)} must be one of {', '.join(choices)}")
    settings = dataclasses.replace(Settings(), **values)
    settings.validate()
    return settings
