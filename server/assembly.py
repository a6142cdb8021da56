"""Model assembly: from the settings and the checkpoints to served models, each with its replica
pool placed on the Ray cluster (devices, dtypes, threads, CPU budget), before any port opens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bertserve.server import config_file, demo
from bertserve.server.checkpoint import Checkpoint, resolve_checkpoint
from bertserve.server.config_file import ModelEntry
from bertserve.server.logs import adopt_library_logger
from bertserve.server.metrics import Metrics
from bertserve.server.model_facts import labels_of, max_sequence_length, placed_dtype, request_limits
from bertserve.server.models import ModelConfig, ServedModel
from bertserve.server.scheduling.admission import AdmissionLimits
from bertserve.server.scheduling.autoscaler import AutoscaleLimits
from bertserve.server.scheduling.batcher import BatchLimits
from bertserve.server.settings import Settings
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers import heads
from bertserve.workers.pool import Placement, ReplicaPool
from bertserve.workers.protocol import Task
from bertserve.workers.ray_init import RayStartError, init_ray
from bertserve.workers.spec import ReplicaSpec
from bertserve.workers.tiny_bert import is_tiny_checkpoint


class StartupError(RuntimeError):
    """Start-up failed; the message is the one line the CLI prints."""


@dataclass(frozen=True)
class ReplicaPlan:
    """How one model's replicas run: device, dtype, torch threads, and the Ray resources each
    replica asks for."""

    device: str
    dtype: str
    threads: int
    placement: Placement


def _init_ray(settings: Settings) -> None:
    """Join --ray-address, or start a local Ray instance that listens on loopback only
    (workers/ray_init.py)."""
    try:
        init_ray(
            settings.ray_address or None,
            num_cpus=demo.ray_cpus(settings) if settings.demo else settings.ray_num_cpus or None,
            # Replicas' output stays in Ray's log files (/tmp/ray/session_latest/logs): the
            # server's own log is JSON events only; what replicas report reaches it as events.
            log_to_driver=False,
            # Ray starts workers at nice 15, so a replica would yield its CPU to the front end, the
            # load and Ray's own daemons mid-batch; an inference replica is the work that matters.
            system_config={"worker_niceness": 0},
        )
    except RayStartError as exc:
        raise StartupError(str(exc)) from None
    adopt_library_logger("ray")  # ray.init() gives Ray's logger its own handler again


def _place(settings: Settings, total_replicas: int = 0) -> ReplicaPlan:
    """Device, dtype and Ray resources of one model's replicas. CPU replicas share the
    cluster's CPUs evenly over every model's replicas unless threads_per_replica is set."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 1.0))
    device = settings.device
    if device == "auto":
        device = "cuda" if gpus >= settings.gpus_per_replica else "cpu"
    if device == "cuda" and gpus < settings.gpus_per_replica:
        raise StartupError(
            f"--device cuda: the Ray cluster has {gpus:g} GPUs, a replica needs {settings.gpus_per_replica:g}"
        )
    dtype = placed_dtype(settings.dtype, device)
    if device == "cuda":
        return ReplicaPlan(device, dtype, 1, Placement(num_cpus=1, num_gpus=settings.gpus_per_replica))
    threads = settings.threads_per_replica or max(1, int(cpus) // max(total_replicas, settings.replicas))
    return ReplicaPlan(device, dtype, threads, Placement(num_cpus=threads))


def _checkpoint_of(settings: Settings) -> Checkpoint:
    return resolve_checkpoint(settings.model, settings.revision)


def _precheck(entry: ModelEntry, checkpoint: Checkpoint) -> None:
    """Mistakes found from config.json alone, reported before Ray starts."""
    config = checkpoint.config()
    max_length = max_sequence_length(config)
    if entry.settings.max_batch_tokens < max_length:
        where = f"model {entry.name!r}: max_batch_tokens" if entry.settings.config else "--max-batch-tokens"
        raise StartupError(
            f"{where} ({entry.settings.max_batch_tokens}) must be at least the model's maximum sequence "
            f"length ({max_length})"
        )
    try:
        heads.check_declared(config, entry.tasks, entry.name)
    except heads.HeadMismatch as exc:
        raise StartupError(str(exc)) from None


def _model_config(entry: ModelEntry, checkpoint: Checkpoint, placed: ReplicaPlan) -> ModelConfig:
    """What the front end knows of a model before its replicas start: limits, and from
    config.json its architecture, labels and the tasks its head can serve."""
    s = entry.settings
    config = checkpoint.config()
    max_length = max_sequence_length(config)
    possible = heads.possible_tasks(config)
    # Declared tasks restrict the model to them (Tokenize is always served).
    tasks = tuple(t for t in possible if not entry.tasks or t in entry.tasks or t is Task.TOKENIZE)
    # Random-weight checkpoints made by workers/tiny_bert.py are flagged as demos wherever they are served.
    is_demo = s.demo or is_tiny_checkpoint(checkpoint.files_dir)
    return ModelConfig(
        name=entry.name,
        checkpoint=checkpoint,
        device=placed.device,
        dtype=placed.dtype,
        limits=request_limits(s, max_length),
        batch_limits=BatchLimits(
            max_batch_size=s.max_batch_size,
            max_batch_tokens=s.max_batch_tokens,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queued=s.max_queued_requests,
            min_padding_efficiency=s.min_padding_efficiency,
            fill_queued=s.fill_queued_batches,
            share=s.share_batches,
        ),
        batches_per_replica=s.batches_per_replica,
        replica_choice=s.replica_choice,
        admission_limits=AdmissionLimits(
            max_inflight=s.max_inflight_requests, max_queued_tokens=s.max_queued_tokens
        ),
        autoscale=_autoscale_limits(s),
        tasks=tasks,
        architecture=heads.architecture(config),
        labels=labels_of(config),
        problem_type=str(config.get("problem_type") or ""),
        demo=is_demo,
        description=demo.DEMO_NOTICE if is_demo else "",
    )


def _autoscale_limits(s: Settings) -> AutoscaleLimits:
    return AutoscaleLimits(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        target_queued_tokens=s.autoscale_target_queued_tokens,
        up_window_s=s.autoscale_up_window_s,
        down_idle_s=s.autoscale_down_idle_s,
        up_cooldown_s=s.autoscale_up_cooldown_s,
        down_cooldown_s=s.autoscale_down_cooldown_s,
    )


def _start_replicas(s: Settings) -> int:
    """Replicas a model starts with: `replicas`, clamped into min..max_replicas when it autoscales."""
    return _autoscale_limits(s).clamp(s.replicas)


def _check_cpu_budget(settings: Settings, placements: list[tuple[ModelEntry, ReplicaPlan]]) -> None:
    """A local Ray instance cannot grow: fail at once, not after the start-up timeout, when the
    CPU replicas ask for more CPUs than it has."""
    if settings.ray_address:
        return
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
    needed = sum(p.placement.num_cpus * _start_replicas(e.settings) for e, p in placements)
    if needed > cpus:
        detail = ", ".join(
            f"{e.name}: {_start_replicas(e.settings)} x {p.placement.num_cpus:g}" for e, p in placements
        )
        raise StartupError(
            f"the replicas need {needed:g} CPUs ({detail}) but the local Ray instance has {cpus:g}; "
            "lower replicas or threads_per_replica, or raise --ray-num-cpus"
        )


async def build_models(
    settings: Settings,
    on_change: Callable[[], None],
    metrics: Metrics | None = None,
    after_ray_init: Callable[[], None] | None = None,
) -> tuple[list[ServedModel], dict[Task, str]]:
    """Resolve every configured model, check its head against its tasks, place its replicas.
    `after_ray_init` runs as soon as Ray is up (run() puts its signal handlers back then)."""
    try:
        entries = demo.entries(settings) if settings.demo else config_file.model_entries(settings)
    except (config_file.ConfigError, demo.DemoBuildError) as exc:
        raise StartupError(str(exc)) from None
    checkpoints = [_checkpoint_of(e.settings) for e in entries]
    for entry, ckpt in zip(entries, checkpoints, strict=True):
        _precheck(entry, ckpt)
    _init_ray(settings)
    if after_ray_init is not None:
        after_ray_init()
    total = sum(e.settings.replicas for e in entries)
    placements = [(e, _place(e.settings, total)) for e in entries]
    _check_cpu_budget(settings, placements)
    configs = [
        _model_config(e, ckpt, placed) for (e, placed), ckpt in zip(placements, checkpoints, strict=True)
    ]
    # Replicas take CPU slots in order over all models (workers/affinity.py): model k's first
    # replica takes the slot after the previous models' starting replicas.
    bases = [sum(_start_replicas(e.settings) for e, _ in placements[:k]) for k in range(len(placements))]
    models = [
        _served_model(entry, config, placed, on_change, metrics, base)
        for (entry, placed), config, base in zip(placements, configs, bases, strict=True)
    ]
    defaults = {task: e.name for e in entries for task in e.default_for}
    return models, defaults


def _served_model(
    entry: ModelEntry,
    config: ModelConfig,
    placed: ReplicaPlan,
    on_change: Callable[[], None],
    metrics: Metrics | None,
    cpu_slot_base: int = 0,
) -> ServedModel:
    s = entry.settings
    spec = ReplicaSpec(
        model_name=config.name,
        checkpoint=config.checkpoint.checkpoint,
        revision=config.checkpoint.revision,
        device=placed.device,
        dtype=placed.dtype,
        threads=placed.threads,
        backend=s.backend,
        fake_delay_ms=s.fake_delay_ms,
        fake_load_ms=s.fake_load_ms,
        tasks=tuple(t for t in entry.tasks if t is not Task.TOKENIZE),
        cpu_linear=s.cpu_linear,
        pin_cpus=s.pin_replica_cpus,
        cpu_slot_base=cpu_slot_base,
    )
    pool = ReplicaPool(
        spec,
        _start_replicas(s),
        placed.placement,
        max_restarts=s.max_restarts,
        pending_after_s=s.replica_pending_after_s,
        direct_channel=s.direct_channel,
    )
    tokenizer = TextTokenizer(config.checkpoint.files_dir, config.limits.max_sequence_length)
    model = ServedModel(config, tokenizer, pool, metrics)  # subscribes to the pool's changes
    pool.subscribe(on_change)  # health follows, after the model has seen the change
    return model
