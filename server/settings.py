"""Server settings: the only place the server's configuration is read from the environment.

Each field is a CLI flag of `bertserve serve` (`--max-batch-size`) and an environment
variable (`BERTSERVE_MAX_BATCH_SIZE`); a flag wins over the variable, the variable over the
configuration file's `server` section, and that over the default. Units are in the field names
or their help; each field's `group` (GROUPS) places its flag in `bertserve serve --help`.

Our code reads the environment in three other places, none of them for a server setting:
- workers/affinity.py, in a replica process: BERTSERVE_CPU_LOCK_DIR, the folder where the
  node's CPU claims are kept. It is the replicas' node-local coordination, not configuration: a
  harness that runs two servers side by side gives each its own folder (bench/targets.py
  `BertserveProcess(own_cpu_claims=True)`, as bench/tools/ab.py does), and
  the replicas inherit it from the server's environment through Ray.
- jobs/data.py (`bertserve finetune`): HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and HF_ENDPOINT, read
  as the Hugging Face libraries read them.
- jobs/finetune/launch.py (`bertserve finetune`): RAY_LOG_TO_DRIVER, as Ray reads it, and
  RAY_ADDRESS, kept to be restored after the job points it at its own Ray instance.
Libraries read their own variables too (Ray, gRPC, torch, transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "BERTSERVE_"
DEFAULT_MODEL = "bert-base-cased"


# The groups of `bertserve serve --help`, in order: name -> (title, description). Every field
# names one (`_f(..., group=...)`); tests/unit/test_settings.py fails on a field without one.
GROUPS: dict[str, tuple[str, str | None]] = {
    "server": ("server", "where it listens, the configuration file, shutdown, the admin service"),
    "model": ("model", "the checkpoint to serve; several models: --config"),
    "replicas": (
        "replicas",
        "Ray actors that each hold one copy of the model (docs/configuration.md#replicas)",
    ),
    "autoscaling": (
        "autoscaling",
        "per model; off unless --max-replicas is above 0 (README, Scaling out)",
    ),
    "batching": ("batching", "how requests are grouped into batches (docs/configuration.md#batching)"),
    "limits": (
        "limits",
        "past a limit a call fails at once: RESOURCE_EXHAUSTED for the queue and admission limits "
        "and a message too large, INVALID_ARGUMENT for the request limits; all per model but "
        "--max-receive-message-length",
    ),
    "security": (
        "security",
        "TLS and the bearer token (README, Secure deployment); the token itself is set by "
        "BERTSERVE_AUTH_TOKEN or the configuration file, never a flag",
    ),
    "observability": ("observability", "logs and metrics"),
    "ray": ("Ray", None),
    "testing": ("testing", "the fake backend: synthetic outputs, no torch in the replicas"),
}


def _f(
    default: Any,
    help: str,
    choices: Sequence[str] | None = None,
    *,
    group: str = "",
    secret: bool = False,
    per_model: bool = False,
) -> Any:
    """A documented field, shown in the `group` of GROUPS. A `secret` one has no CLI flag (argv is
    visible to every local user), only its environment variable and the configuration file, and
    stays out of the repr. A `per_model` one may also be set by each model entry of the
    configuration file (config_file.MODEL_FIELDS); the others are server-wide."""
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, "choices": choices, "secret": secret, "group": group, "per_model": per_model},
    )


@dataclass(frozen=True)
class Settings:
    config: str = _f(
        "",
        "YAML or TOML file: server settings and the models to serve (docs/configuration.md)",
        group="server",
    )
    # Model
    model: str = _f(
        DEFAULT_MODEL,
        "Hub id (e.g. bert-base-cased) or local checkpoint directory",
        group="model",
        per_model=True,
    )
    model_name: str = _f(
        "",
        "name clients use to select the model (empty: the last part of --model)",
        group="model",
        per_model=True,
    )
    revision: str = _f("", "Hub revision: branch, tag or commit (empty: main)", group="model", per_model=True)
    demo: bool = _f(
        False,
        "serve tiny random-weight models, built locally, that cover every task (no network; predictions "
        "meaningless)",
        group="model",
    )
    demo_dir: str = _f(
        "~/.cache/bertserve/demo", "where the --demo models are built and cached", group="model"
    )
    # Replicas
    replicas: int = _f(1, "model replicas (Ray actors) to start", group="replicas", per_model=True)
    device: str = _f(
        "auto",
        "replica device: auto (cuda if the Ray cluster has GPUs), cpu or cuda",
        ("auto", "cpu", "cuda"),
        group="replicas",
        per_model=True,
    )
    gpus_per_replica: float = _f(
        1.0,
        "GPUs each replica asks Ray for (fractions share a GPU)",
        group="replicas",
        per_model=True,
    )
    threads_per_replica: int = _f(
        0,
        "torch threads, and Ray CPUs, of each CPU replica (0: the CPUs divided among the replicas "
        "started with, which leaves none for `bertserve scale` to add)",
        group="replicas",
        per_model=True,
    )
    pin_replica_cpus: bool = _f(
        True,
        "pin each CPU replica's threads to cores of its own (docs/configuration.md#replicas)",
        group="replicas",
        per_model=True,
    )
    dtype: str = _f(
        "auto",
        "weights and compute dtype: auto (bfloat16 on GPU; on CPU bfloat16 where a probe finds it "
        "accurate and faster, else float32), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
        group="replicas",
        per_model=True,
    )
    cpu_linear: str = _f(
        "auto",
        "float32 linear layers of CPU replicas: auto (oneDNN kernels where a probe finds them "
        "faster and in agreement), onednn or torch (docs/configuration.md#replicas)",
        ("auto", "onednn", "torch"),
        group="replicas",
        per_model=True,
    )
    max_restarts: int = _f(
        3, "times Ray restarts a crashed replica (-1: forever)", group="replicas", per_model=True
    )
    direct_channel: bool = _f(
        True,
        "replicas on the front end's node take batches over a Unix socket, not a Ray actor call "
        "(about 2 ms less per batch)",
        group="replicas",
    )
    replica_pending_after_s: float = _f(
        5.0,
        "seconds a replica added at run time may wait for Ray to place it before it is reported "
        "PENDING (it starts by itself once the cluster has its CPUs/GPUs)",
        group="replicas",
        per_model=True,
    )
    # Autoscaling (per model; off unless max_replicas > 0; README "Scaling out")
    min_replicas: int = _f(
        0,
        "fewest replicas (0 with --max-replicas 0: autoscaling off)",
        group="autoscaling",
        per_model=True,
    )
    max_replicas: int = _f(0, "most replicas (0: autoscaling off)", group="autoscaling", per_model=True)
    autoscale_target_queued_tokens: int = _f(
        4096,
        "queued tokens per ready replica above which the model scales up",
        group="autoscaling",
        per_model=True,
    )
    autoscale_up_window_s: float = _f(
        2.0,
        "seconds the queue must stay above the target before scaling up",
        group="autoscaling",
        per_model=True,
    )
    autoscale_down_idle_s: float = _f(
        60.0,
        "seconds a model must stay idle (empty queues, a replica free) before it loses a replica",
        group="autoscaling",
        per_model=True,
    )
    autoscale_up_cooldown_s: float = _f(
        5.0,
        "seconds after any scaling before scaling up again",
        group="autoscaling",
        per_model=True,
    )
    autoscale_down_cooldown_s: float = _f(
        30.0,
        "seconds after any scaling before scaling down again",
        group="autoscaling",
        per_model=True,
    )
    backend: str = _f(
        "torch",
        "replica backend: torch, or fake (synthetic outputs, for tests)",
        ("torch", "fake"),
        group="testing",
        per_model=True,
    )
    fake_delay_ms: float = _f(
        0.0, "fake backend: compute time per batch, in milliseconds", group="testing", per_model=True
    )
    fake_load_ms: float = _f(
        0.0,
        "fake backend: load time of every replica but a model's first, in milliseconds (start-up tests)",
        group="testing",
        per_model=True,
    )
    # Batching
    max_batch_size: int = _f(32, "most sequences in one batch", group="batching", per_model=True)
    max_batch_tokens: int = _f(
        16384,
        "most padded tokens (batch size x longest sequence) in one batch",
        group="batching",
        per_model=True,
    )
    max_wait_ms: float = _f(
        2.0,
        "while replicas are busy, milliseconds the oldest request waits for its batch to fill "
        "(docs/configuration.md#batching)",
        group="batching",
        per_model=True,
    )
    batches_per_replica: int = _f(
        2, "batches in flight per replica (1 running + queued)", group="batching", per_model=True
    )
    fill_queued_batches: bool = _f(
        True,
        "the batch queued behind a busy replica keeps filling until that replica is due to be free "
        "(off: it leaves after --max-wait-ms)",
        group="batching",
        per_model=True,
    )
    share_batches: bool = _f(
        True,
        "split waiting inputs between the replicas that can start them about as soon, rather than "
        "give them all to one",
        group="batching",
        per_model=True,
    )
    replica_choice: str = _f(
        "warm",
        "which of equally loaded replicas takes the next batch: warm (of idle ones, the one that "
        "finished last) or spread (the one with the fewest batches)",
        ("warm", "spread"),
        group="batching",
        per_model=True,
    )
    min_padding_efficiency: float = _f(
        0.9,
        "real tokens / padded tokens a batch must keep, 0..1 (lower it on GPUs, where padding costs less)",
        group="batching",
        per_model=True,
    )
    max_queued_requests: int = _f(
        4096,
        "queued inputs per model; more get RESOURCE_EXHAUSTED",
        group="limits",
        per_model=True,
    )
    # Admission (per model; server/scheduling/admission.py)
    max_inflight_requests: int = _f(
        1024,
        "requests (unary calls and stream requests) admitted to a model and not yet answered; more "
        "get RESOURCE_EXHAUSTED (0: unlimited)",
        group="limits",
        per_model=True,
    )
    max_queued_tokens: int = _f(
        262_144,
        "tokens waiting in a model's queues; a request that would pass it gets RESOURCE_EXHAUSTED "
        "unless the queues are empty (0: unlimited)",
        group="limits",
        per_model=True,
    )
    # Request limits
    max_inputs_per_request: int = _f(
        64, "most texts, pairs or questions in one request", group="limits", per_model=True
    )
    max_text_chars: int = _f(100_000, "most characters in one text", group="limits", per_model=True)
    max_top_k: int = _f(100, "largest FillMask and AnswerQuestion top_k", group="limits", per_model=True)
    # Network
    host: str = _f("127.0.0.1", "address to bind (0.0.0.0: every interface)", group="server")
    port: int = _f(50051, "gRPC port (0: pick a free one)", group="server")
    port_file: str = _f(
        "", "write the bound port to this file once it accepts calls (for scripts and tests)", group="server"
    )
    grace_period_s: float = _f(
        10.0, "on SIGTERM/SIGINT, seconds in-flight calls get to finish", group="server"
    )
    max_receive_message_length: int = _f(
        16 * 1024 * 1024,
        "largest request message, in bytes; larger ones get RESOURCE_EXHAUSTED",
        group="limits",
    )
    # Security (README "Secure deployment")
    tls_cert_file: str = _f(
        "",
        "PEM certificate (chain) of the server; with --tls-key-file the port serves TLS only",
        group="security",
    )
    tls_key_file: str = _f("", "PEM private key of --tls-cert-file (unencrypted)", group="security")
    tls_client_ca_file: str = _f(
        "",
        "PEM CA certificates; when set, clients must present a certificate they signed (mutual TLS)",
        group="security",
    )
    auth_token_file: str = _f(
        "",
        "file holding the bearer token every call must send ('authorization: Bearer <token>'); "
        "health and reflection stay open",
        group="security",
    )
    auth_token: str = _f(
        "",
        "the bearer token itself: environment or configuration file only, never a flag",
        group="security",
        secret=True,
    )
    metrics_port: int = _f(
        0,
        "Prometheus metrics HTTP port: GET /metrics on --host (0: off; docs/metrics.md)",
        group="observability",
    )
    admin_enabled: bool = _f(
        False,
        "serve AdminService (ScaleModel: `bertserve scale`); it requires the bearer token when one is set",
        group="server",
    )
    # Ray
    ray_address: str = _f(
        "", "Ray cluster to join (e.g. ray-head:6379; empty: start a local one)", group="ray"
    )
    ray_num_cpus: int = _f(0, "CPUs of the local Ray instance (0: every CPU of this machine)", group="ray")
    startup_timeout_s: float = _f(
        600.0, "seconds to wait for every model's first replica to warm up", group="replicas"
    )
    # Logs
    log_level: str = _f(
        "info", "least severe level logged", ("debug", "info", "warning", "error"), group="observability"
    )
    log_format: str = _f(
        "json",
        "json (one object per line on stderr) or console (for people)",
        ("json", "console"),
        group="observability",
    )

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


# Metavars of `--help` for string fields that are not paths (`*_file`, `*_dir`, `config`).
_METAVARS = {"model": "ID_OR_PATH", "model_name": "NAME", "revision": "REV", "host": "HOST"}


def _metavar(name: str, kind: str) -> str:
    """What `--help` shows for a flag's value: its unit where the name has one."""
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s"):
        return "SECONDS"
    if kind in ("int", "float"):
        return "N"
    if name.endswith(("_file", "_dir")) or name == "config":
        return "PATH"
    return _METAVARS.get(name, "HOST:PORT" if name.endswith("_address") else "TEXT")


def _shown_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "empty"
    return str(value)


def _help(f: dataclasses.Field[Any]) -> str:
    """The field's help with its default: "... (0: off; default: 0)"."""
    text, default = f.metadata["help"], _shown_default(f.default)
    return f"{text[:-1]}; default: {default})" if text.endswith(")") else f"{text} (default: {default})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field, in the argument group its `group` names (GROUPS order); a
    field without a known group goes to "other". Defaults stay None so the environment and the
    configuration file can fill them; the help shows the real default."""
    groups = {
        name: parser.add_argument_group(title, description and textwrap.fill(description, 76))
        for name, (title, description) in GROUPS.items()
    }
    for f in fields(Settings):
        if f.metadata["secret"]:
            continue
        name = f.metadata["group"] if f.metadata["group"] in GROUPS else ""
        if name not in groups:
            groups[name] = parser.add_argument_group("other")
        group = groups[name]
        help_text = _help(f)
        if f.type == "bool":
            group.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                # --flag / --no-flag (a flag whose default is on can be turned off)
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            caster = {"int": int, "float": float}.get(str(f.type), str)
            group.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                type=caster,
                default=None,
                choices=f.metadata["choices"],
                metavar=None if f.metadata["choices"] else _metavar(f.name, str(f.type)),
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
