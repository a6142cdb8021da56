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


def _f(default: Any, help: str, choices: Sequence[str] | None = None, *, secret: bool = False) -> Any:
    """A documented field. A `secret` one has no CLI flag (argv is visible to every local user),
    only its environment variable and the configuration file, and stays out of the repr."""
    return field(
        default=default, repr=not secret, metadata={"help": help, "choices": choices, "secret": secret}
    )


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
    pin_replica_cpus: bool = _f(
        True,
        "each CPU replica claims threads_per_replica cores of its node for itself and pins its "
        "threads to them (per-CPU lock files, released when the replica exits); one that finds too "
        "few free cores runs unpinned",
    )
    dtype: str = _f(
        "auto",
        "weights and compute dtype: auto (bfloat16 on GPU; on CPU bfloat16 when the CPU has bf16 "
        "instructions, a probe batch agrees with float32 and runs at least 1.1x faster, else "
        "float32; GetModelInfo's replicas say what was measured), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
    )
    compile: bool = _f(
        False,
        "torch.compile each replica's encoder (off by default): can cut compute per batch, but the "
        "replica's warm-up compiles it first (about 1-2 minutes for bert-base on CPU, seconds for tiny "
        "models); shapes are dynamic, and an input shape the graph does not cover compiles again "
        "on its first batch",
    )
    cpu_linear: str = _f(
        "auto",
        "float32 linear layers of CPU replicas: auto (oneDNN kernels on weights packed at load when "
        "a probe batch agrees with torch's and runs at least 1.05x faster; models with hidden size "
        "256 or more; GetModelInfo's replicas say what was measured), onednn (always) or torch "
        "(torch's own kernels)",
        ("auto", "onednn", "torch"),
    )
    max_restarts: int = _f(3, "times Ray restarts a crashed replica (-1: forever)")
    direct_channel: bool = _f(
        True,
        "replicas on the front end's node take batches over a Unix socket instead of a Ray actor "
        "call (about 2 ms less per batch); Ray still places, watches and restarts them",
    )
    replica_pending_after_s: float = _f(
        5.0,
        "seconds a replica added at run time may wait to be placed before it is reported PENDING "
        "(the Ray cluster lacks its CPUs/GPUs; it starts by itself when they appear)",
    )
    # Autoscaling (per model; off unless max_replicas > 0; README "Scaling out")
    min_replicas: int = _f(0, "autoscaling: fewest replicas (0 with max_replicas 0: autoscaling off)")
    max_replicas: int = _f(0, "autoscaling: most replicas (0: autoscaling off)")
    autoscale_target_queued_tokens: int = _f(
        4096, "autoscaling: queued tokens per ready replica above which the model scales up"
    )
    autoscale_up_window_s: float = _f(
        2.0, "autoscaling: seconds the queue must stay above the target before scaling up"
    )
    autoscale_down_idle_s: float = _f(
        60.0, "autoscaling: seconds a model must stay idle (empty queues, a replica free) before scaling down"
    )
    autoscale_up_cooldown_s: float = _f(5.0, "autoscaling: seconds after any scaling before scaling up again")
    autoscale_down_cooldown_s: float = _f(
        30.0, "autoscaling: seconds after any scaling before scaling down again"
    )
    backend: str = _f(
        "torch", "replica backend: torch, or fake (synthetic outputs, for tests)", ("torch", "fake")
    )
    fake_delay_ms: float = _f(0.0, "fake backend: compute time per batch, in milliseconds")
    fake_load_ms: float = _f(
        0.0, "fake backend: load time of every replica but a model's first, in milliseconds (start-up tests)"
    )
    # Batching
    max_batch_size: int = _f(32, "most sequences in one batch")
    max_batch_tokens: int = _f(16384, "most padded tokens (batch size x longest sequence) in one batch")
    max_wait_ms: float = _f(
        2.0,
        "while replicas are busy, a batch is sent once its oldest request has waited this long, ms "
        "(with fill_queued_batches, possibly later: not before the replica could start it)",
    )
    batches_per_replica: int = _f(2, "batches in flight per replica (1 running + queued)")
    fill_queued_batches: bool = _f(
        True,
        "the batch queued behind a busy replica's running batch keeps filling until shortly before "
        "that batch is expected to end (a line fitted to recent batches' time against padded "
        "tokens), so requests arriving meanwhile join it; off: it is sent once max_wait_ms has passed",
    )
    share_batches: bool = _f(
        True,
        "split the waiting inputs between replicas that can start them about as soon (an idle "
        "one, or one whose running batch ends before half the whole batch would have run), "
        "instead of one replica taking them all while another idles or runs single inputs",
    )
    replica_choice: str = _f(
        "warm",
        "router: which of several equally loaded replicas takes the next batch: warm (of idle ones, "
        "the one that finished a batch last, so a lone client stays on one warm replica; of busy ones, "
        "the one whose batch started first) or spread (the one with the fewest batches)",
        ("warm", "spread"),
    )
    min_padding_efficiency: float = _f(
        0.9,
        "batcher: real tokens / padded tokens a batch must keep, 0..1 (keeps short inputs out of long "
        "batches: on CPU a batch costs about its padded tokens; lower it on GPUs, where padding is "
        "cheaper)",
    )
    max_queued_requests: int = _f(4096, "queued inputs per model; more get RESOURCE_EXHAUSTED")
    # Admission (per model; server/scheduling/admission.py)
    max_inflight_requests: int = _f(
        1024,
        "admission: requests (unary calls and stream requests) admitted to a model and not yet answered; "
        "more get RESOURCE_EXHAUSTED at once (0: unlimited)",
    )
    max_queued_tokens: int = _f(
        262_144,
        "admission: tokens of inputs waiting in a model's batcher queues; a request that would pass it "
        "gets RESOURCE_EXHAUSTED at once unless the queues are empty (0: unlimited)",
    )
    # Request limits
    max_inputs_per_request: int = _f(64, "most texts or pairs in one request")
    max_text_chars: int = _f(100_000, "most characters in one text")
    max_top_k: int = _f(100, "largest FillMask top_k")
    # Network
    host: str = _f("127.0.0.1", "address to bind; use 0.0.0.0 to listen on every interface")
    port: int = _f(50051, "gRPC port (0: pick a free one)")
    port_file: str = _f("", "write the bound port to this file once it accepts calls (for scripts and tests)")
    keep_warm_ms: float = _f(
        0.0,
        "while a lone request waits on a replica, call the server's own health service every this "
        "many ms so the reply path is warm when the replica answers (e.g. 3; 0: off; plaintext "
        "ports only; docs/benchmarks.md)",
    )
    grace_period_s: float = _f(10.0, "on SIGTERM/SIGINT, seconds in-flight requests get to finish")
    max_receive_message_length: int = _f(
        16 * 1024 * 1024, "largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED"
    )
    # Security (README "Secure deployment")
    tls_cert_file: str = _f(
        "", "PEM certificate (chain) of the server; with --tls-key-file the port serves TLS only"
    )
    tls_key_file: str = _f("", "PEM private key of --tls-cert-file (unencrypted)")
    tls_client_ca_file: str = _f(
        "", "PEM CA certificates; when set, clients must present a certificate they signed (mutual TLS)"
    )
    auth_token_file: str = _f(
        "",
        "file holding the bearer token every call must send as metadata 'authorization: Bearer "
        "<token>' (health and reflection stay open); or set the token in BERTSERVE_AUTH_TOKEN",
    )
    auth_token: str = _f(
        "", "the bearer token itself: environment or configuration file only, never a flag", secret=True
    )
    metrics_port: int = _f(
        0, "Prometheus metrics HTTP port, GET /metrics on --host (0: off; docs/metrics.md)"
    )
    admin_enabled: bool = _f(
        False,
        "serve bertserve.v1.AdminService (ScaleModel, `bertserve scale`); it requires the bearer token "
        "when one is set, so set one wherever clients are not all trusted",
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
            "max_receive_message_length",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1")
        for name in ("max_inflight_requests", "max_queued_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must not be negative (0: unlimited)")
        if not 0.0 <= self.min_padding_efficiency <= 1.0:
            raise ValueError("--min-padding-efficiency must be between 0 and 1")
        if self.keep_warm_ms < 0:
            raise ValueError("--keep-warm-ms must not be negative (0: off)")
        if self.max_wait_ms < 0:
            raise ValueError("--max-wait-ms must not be negative")
        if self.gpus_per_replica <= 0:
            raise ValueError("--gpus-per-replica must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in 0..65535")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("--metrics-port must be in 0..65535 (0: off)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("--tls-cert-file and --tls-key-file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file")
        if self.min_replicas < 0 or self.max_replicas < 0:
            raise ValueError("--min-replicas and --max-replicas must not be negative (0: autoscaling off)")
        if self.max_replicas and not 1 <= max(self.min_replicas, 1) <= self.max_replicas <= 256:
            raise ValueError("autoscaling needs 1 <= --min-replicas <= --max-replicas <= 256")
        if self.min_replicas and not self.max_replicas:
            raise ValueError("--min-replicas needs --max-replicas (autoscaling is off while it is 0)")
        if self.autoscale_target_queued_tokens < 1:
            raise ValueError("--autoscale-target-queued-tokens must be at least 1")
        for name in (
            "replica_pending_after_s",
            "autoscale_up_window_s",
            "autoscale_down_idle_s",
            "autoscale_up_cooldown_s",
            "autoscale_down_cooldown_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must not be negative")
        if self.auth_token and self.auth_token_file:
            raise ValueError("set the token by --auth-token-file or BERTSERVE_AUTH_TOKEN, not both")


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
        if f.metadata["secret"]:
            continue
        help_text = f"{f.metadata['help']} [env {_env(f.name)}; default {f.default!r}]"
        if f.type == "bool":
            parser.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                # --flag / --no-flag (a flag whose default is on can be turned off)
                action=argparse.BooleanOptionalAction,
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
